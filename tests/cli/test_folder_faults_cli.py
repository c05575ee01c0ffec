"""The CLI on a full disk and on a folder another run holds: one line on stderr, exit status 2, at once.

(The same faults in the middle of a real ``persona-gate run`` process, and the resume after them,
are in tests/experiments/test_folder_faults.py.)
"""

from __future__ import annotations

import errno
import os

import persona_gate.io as io
from persona_gate.cli.main import main


def _one_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("persona-gate: error: "), err
    return err[0]


def test_a_full_disk_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(io.DISK_FULL_AT_WRITE, "1")  # from this process's next write on, the disk is full
    line = _one_line(capsys, ["demo", "--out", str(tmp_path / "run"), "--no-progress"])
    assert f"cannot write to {tmp_path / 'run'}: No space left on device (ENOSPC)" in line
    assert "Free some space on that disk (or raise the quota)" in line and "the run resumes" in line
    # no temporary is left; the folder the command made for nothing is removed with it
    assert not (tmp_path / "run").exists() or [p.name for p in (tmp_path / "run").iterdir()] == []


def test_a_read_only_disk_is_one_line(capsys, tmp_path, monkeypatch):
    def read_only(path, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(io.atomic, "_write_file", read_only)
    line = _one_line(capsys, ["demo", "--out", str(tmp_path / "run"), "--no-progress"])
    assert "Read-only file system (EROFS); remount it writable or choose another output folder (--out)" in line


def test_a_folder_another_run_holds_is_one_line(capsys, tmp_path):
    out = tmp_path / "run"
    io.claim_folder(out, "run")
    with io.FolderLock(out, "persona-gate run"):  # held by a live run (here: this process)
        line = _one_line(capsys, ["demo", "--out", str(out), "--no-progress"])
    assert f"{out} is in use by another persona-gate run (pid {os.getpid()} on {io.HOST} since " in line
    assert line.endswith("wait for it to finish, or use another --out folder.")
