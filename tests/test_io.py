"""persona_gate.io under the faults a user meets: a full or read-only disk, two owners of one folder.

* a write that meets ENOSPC / EDQUOT is a :class:`DiskFullError` naming the folder, the errno's
  meaning and the size being written; EROFS an :class:`OutputNotWritableError`; the previous
  complete file or artefact still loads and no temporary is left (also on a real, small tmpfs);
* :class:`FolderLock`: one owner at a time (also when several processes race for it), the owner
  named in the refusal, a dead owner's lock taken over with a warning, a lock released only by
  its holder;
* temporaries are tidied only when their writer has ended.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import persona_gate.io as io
from persona_gate.errors import DiskFullError, FolderLockedError, OutputNotWritableError, PersonaGateError
from persona_gate.grid.store import CellStore


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _failing_write(monkeypatch, code: int = errno.ENOSPC) -> None:
    """Make io's temporaries fail half-way through, as on a disk that fills up."""

    def write(path, data):
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(io.atomic, "_write_file", write)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_a_full_disk_is_a_named_error_and_the_old_file_stays(tmp_path, monkeypatch):
    target = io.atomic_write_text(tmp_path / "out" / "summary.json", '{"v": 1}')
    _failing_write(monkeypatch)
    with pytest.raises(DiskFullError) as e:
        io.atomic_write_text(target, '{"v": 2}' + " " * 1000)
    msg = str(e.value)
    assert str(tmp_path / "out") in msg and "No space left on device (ENOSPC)" in msg
    assert "1.0 KB to write" in msg and "free" in msg and "run the same command again" in msg
    assert isinstance(e.value, PersonaGateError) and isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert "\n" not in msg
    assert json.loads(target.read_text()) == {"v": 1}  # the previous complete file
    assert _hidden(target.parent) == []  # the temporary is gone


@pytest.mark.parametrize(
    ("code", "error", "words"),
    [
        (errno.EDQUOT, DiskFullError, "(EDQUOT)"),
        (errno.EROFS, OutputNotWritableError, "Read-only file system (EROFS); remount it writable"),
        (errno.EACCES, PermissionError, "Permission denied"),  # not a disk fault: the OSError as it was
    ],
)
def test_quota_and_read_only_disks(tmp_path, monkeypatch, code, error, words):
    _failing_write(monkeypatch, code)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        io.atomic_write_bytes(tmp_path / "x.bin", b"abc")
    assert isinstance(e.value, PersonaGateError) == (code != errno.EACCES)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_mid_artefact_keeps_the_previous_artefact(tmp_path, monkeypatch):
    path = tmp_path / "result"
    io.save_artefact(path, "thing", {"v": torch.zeros(4)}, {"n": 1})

    def half_then_full(folder, kind, tensors, manifest):
        (folder / io.TENSORS).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.artefacts, "write_artefact_files", half_then_full)
    with pytest.raises(DiskFullError, match="No space left on device") as e:
        io.save_artefact(path, "thing", {"v": torch.ones(1000)}, {"n": 2})
    assert str(tmp_path) in str(e.value) and "4.0 KB to write" in str(e.value)
    manifest, tensors = io.load_artefact(path, "thing")
    assert manifest["n"] == 1 and torch.equal(tensors["v"], torch.zeros(4))
    assert _hidden(tmp_path) == []


def test_a_real_full_tmpfs(tmp_path):
    """A 128 KB tmpfs: the named error, the old artefact intact, and the save succeeds once there is room."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)], capture_output=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {got.stderr.decode().strip()}")
    try:
        path = mnt / "result"
        io.save_artefact(path, "thing", {"v": torch.zeros(16)}, {"n": 1})
        with pytest.raises(DiskFullError, match=r"No space left on device \(ENOSPC\); 1\.0 MB to write") as e:
            io.save_artefact(path, "thing", {"v": torch.ones(250_000)}, {"n": 2})
        assert str(mnt) in str(e.value)
        manifest, tensors = io.load_artefact(path, "thing")
        assert manifest["n"] == 1 and torch.equal(tensors["v"], torch.zeros(16))
        del tensors  # loaded tensors map the file: the tmpfs would stay busy
        assert _hidden(mnt) == []
        subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)  # space freed
        io.save_artefact(path, "thing", {"v": torch.ones(250_000)}, {"n": 2})
        assert io.read_manifest(path, "thing")["n"] == 2
    finally:
        gc.collect()
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)  # detach it once nothing uses it


# ---------------------------------------------------------------- one owner per folder


def test_a_held_folder_refuses_a_second_owner_naming_the_first(tmp_path):
    with io.FolderLock(tmp_path, "persona-gate run") as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == io.HOST and owner["since"]
        with pytest.raises(FolderLockedError) as e:
            io.FolderLock(tmp_path, "persona-gate run").acquire()
        msg = str(e.value)
        assert f"pid {os.getpid()} on {io.HOST} since {owner['since']}" in msg
        assert "wait for it to finish, or use another --out folder" in msg and "\n" not in msg
    assert not lock.path.exists()  # released on leaving the block
    with pytest.raises(RuntimeError), io.FolderLock(tmp_path):
        raise RuntimeError("a bug")
    assert list(tmp_path.iterdir()) == []  # released on an exception too; no temporary left


@pytest.mark.parametrize("kind", ["dead pid", "pid reused by another process", "unreadable"])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, kind):
    if kind == "dead pid":
        record = {"pid": _dead_pid(), "host": io.HOST, "since": "yesterday"}
    elif kind == "pid reused by another process":  # a live pid, but not the process that wrote the lock
        record = {"pid": os.getpid(), "host": io.HOST, "since": "yesterday", "started": "1"}
        if io.process_start() is None:
            pytest.skip("no /proc here: a reused pid cannot be told apart")
    else:
        record = None
    (tmp_path / io.LOCK).write_text("{trunc" if record is None else json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="persona_gate.io"), io.FolderLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["token"] == lock.token
    assert "taking over the lock" in caplog.text and "no longer running" in caplog.text
    if record is not None:
        assert f"pid {record['pid']} on {io.HOST} since yesterday" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_a_lock_of_another_host_is_refused_with_how_to_clear_it(tmp_path):
    (tmp_path / io.LOCK).write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "since": "09:00"}))
    with pytest.raises(FolderLockedError, match=r"pid 1 on gpu-node-7 since 09:00.*delete .*\.persona_gate\.lock"):
        io.FolderLock(tmp_path).acquire()


def test_release_leaves_a_lock_that_is_not_its_own(tmp_path):
    lock = io.FolderLock(tmp_path).acquire()
    other = {"pid": os.getpid(), "host": io.HOST, "since": "now", "token": "someone-else"}
    lock.path.write_text(json.dumps(other))  # taken over meanwhile (e.g. this process was thought dead)
    lock.release()
    assert json.loads(lock.path.read_text()) == other


_RACER = """
import sys, time
from pathlib import Path
from persona_gate.errors import FolderLockedError
from persona_gate.io import FolderLock
folder, go, done = (Path(a) for a in sys.argv[1:])
while not go.exists():  # every racer starts at once
    time.sleep(0.005)
try:
    lock = FolderLock(folder).acquire()
except FolderLockedError as e:
    print("refused:", e)
    sys.exit(2)
while not done.exists():  # hold the folder until every other racer has been refused
    time.sleep(0.01)
lock.release()
"""


def test_processes_racing_for_a_folder_get_one_owner(tmp_path):
    folder, go, done = tmp_path / "run", tmp_path / "go", tmp_path / "done"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-c", _RACER, str(folder), str(go), str(done)]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) for _ in range(5)]
    go.touch()
    try:
        deadline = time.monotonic() + 60
        while sum(p.poll() is not None for p in procs) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        done.touch()
    codes = [p.wait(timeout=60) for p in procs]
    outs = [p.stdout.read() for p in procs]
    assert sorted(codes) == [0, 2, 2, 2, 2], outs
    assert all("is in use by another persona-gate run (pid" in o for o, c in zip(outs, codes) if c == 2)
    assert list(folder.iterdir()) == []


# ---------------------------------------------------------------- temporaries


def test_only_temporaries_of_ended_writers_are_tidied(tmp_path):
    live = tmp_path / f".a.safetensors.tmp-{io.atomic._writer_tag()}"  # this (live) process is writing it
    dead = tmp_path / f".b.safetensors.tmp-{_dead_pid()}.{io.atomic._HOST_TAG}-0123abcd"
    elsewhere = tmp_path / ".c.safetensors.tmp-12.ffffff-0123abcd"  # another host's
    legacy = tmp_path / ".d.safetensors.tmp-0123abcd"  # an unknown writer's
    for p in (live, dead, elsewhere, legacy):
        p.write_bytes(b"half")
    CellStore(tmp_path, "fp")  # a store opened in another notebook tidies what no one writes
    assert _hidden(tmp_path) == sorted(p.name for p in (live, elsewhere, legacy))
    io.remove_stale_temporaries(tmp_path, (".*.tmp-*",), owner=True)  # the folder's lock holder
    assert _hidden(tmp_path) == [live.name]
