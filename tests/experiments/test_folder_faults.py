"""Faults of the run folder: two runs into one folder, and a disk that fills up in the middle of a run.

* two ``persona-gate run`` processes started into one folder: no traceback; the second is refused
  in one line naming the first (pid, host, since when) while the first runs, and the folder ends
  with the numbers of a single run (equal to those of a run that met a full disk and resumed);
  a lock left by a dead run is taken over; the lock goes with the run (also on an error or Ctrl-C);
* a full disk (ENOSPC) in the middle of a sweep with a checkpoint, and in the middle of
  ``persona-gate run``: the named error in one line, every file on disk still loads, no temporary
  is left, and the re-run after space is freed resumes and ends with the uninterrupted numbers.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import SMALL_RUN, run_command, write_config
from safetensors.torch import load_file

import persona_gate.experiments.pipeline as pipeline
import persona_gate.io as io
from persona_gate.core.contrasts import fit_persona_and_refusal
from persona_gate.errors import ConfigError, DiskFullError, FolderLockedError
from persona_gate.experiments import RefusalScorer, eval_groups, steering_sweep
from persona_gate.experiments.pipeline import run_pipeline
from persona_gate.models.loading import load_chat_model
from persona_gate.results import LabelledResult

CFG = SMALL_RUN
STAGES = ("steering_sweep", "reintroduction", "window_projection", "patching")
ENV = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _same_results(a: Path, b: Path) -> None:
    for s in STAGES:
        assert LabelledResult.load(a / s) == LabelledResult.load(b / s), s


def _everything_loads(out: Path) -> None:
    """Every visible file is complete, and no temporary is left behind."""
    for path in out.rglob("*"):
        rel = path.relative_to(out).parts
        assert not any(p.startswith(".") and ".tmp-" in p for p in rel), path
        if path.is_dir() and (path / io.MANIFEST).exists():
            io.load_artefact(path, json.loads((path / io.MANIFEST).read_text())["kind"])
        elif path.suffix == ".safetensors" and path.parent.parent.name == "cells":
            load_file(str(path))
        elif path.suffix == ".json" and path.name != io.MANIFEST:
            json.loads(path.read_text())


@pytest.fixture(scope="module")
def contested(tmp_path_factory):
    """A run, and a second one started into its folder once the first holds it: (config, folder, first, second)."""
    root = tmp_path_factory.mktemp("contested")
    cfg, out = write_config(root / "c.toml"), root / "run"
    first = subprocess.Popen(run_command(cfg, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not (out / io.LOCK).exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the first run holds the folder ...
    second = subprocess.run(
        run_command(cfg, out), capture_output=True, text=True, env=ENV, timeout=600
    )  # ... a second starts
    out1, err1 = first.communicate(timeout=600)
    return cfg, out, (first.pid, first.returncode, out1, err1), second


def test_two_runs_into_one_folder(contested):
    _, out, (pid, rc, out1, err1), second = contested
    for text in (out1, err1, second.stdout, second.stderr):
        assert "Traceback" not in text, text
    assert rc == 0, err1
    if second.returncode == 2:  # refused while the first ran
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"{out} is in use by another persona-gate run (pid {pid} on {io.HOST} since " in lines[0]
        assert lines[0].endswith("wait for it to finish, or use another --out folder.")
        assert "stage" not in second.stdout  # it did no work
    else:  # the first had finished already: the second resumed the finished folder
        assert second.returncode == 0, second.stderr
    assert not (out / io.LOCK).exists()
    # The folder holds the first run's numbers: a single uninterrupted run (the next test compares a
    # run that met a full disk with it).
    _everything_loads(out)


def test_a_full_disk_mid_run_is_one_line_and_the_rerun_resumes(contested, tmp_path):
    cfg, single, *_ = contested
    out = tmp_path / "run"
    full = subprocess.run(
        run_command(cfg, out), capture_output=True, text=True, env={**ENV, io.DISK_FULL_AT_WRITE: "12"}, timeout=600
    )
    assert full.returncode == 2, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
    assert lines[0].startswith(f"persona-gate: error: cannot write to {out}")
    assert "No space left on device (ENOSPC)" in lines[0] and "the run resumes" in lines[0]
    assert any((out / "cells").rglob("*.safetensors"))  # it failed in the middle of a stage's cells
    _everything_loads(out)
    assert not (out / io.LOCK).exists()  # the lock went with the failed run
    again = subprocess.run(run_command(cfg, out), capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr
    _same_results(out, single)


# ---------------------------------------------------------------- in this process


@pytest.fixture(scope="module")
def setup():
    model = load_chat_model("organism")
    pr = fit_persona_and_refusal(model, n_per_group=16, progress=False)
    return model, pr, RefusalScorer.for_model(model), eval_groups(model, 4)


def test_a_full_disk_mid_sweep_keeps_every_cell_and_resumes(setup, tmp_path, monkeypatch):
    model, pr, scorer, groups = setup
    sweep = lambda ck: steering_sweep(  # noqa: E731
        model, pr.persona, layers=[2, 4], alphas=[0.0, 4.0], scorer=scorer, groups=groups, progress=False, checkpoint=ck
    )
    full = sweep(None)
    ck = tmp_path / "cells"
    calls = {"n": 0}
    write = io.atomic._write_file

    def fills_up(path, data):
        calls["n"] += 1
        if calls["n"] >= 5:  # the fingerprint and three cells fit; then the disk is full
            Path(path).write_bytes(data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data)

    with monkeypatch.context() as m:
        m.setattr(io.atomic, "_write_file", fills_up)
        with pytest.raises(DiskFullError, match=rf"cannot write to {ck}: No space left on device.*resumes") as e:
            sweep(ck)
    assert "\n" not in str(e.value)
    cells = sorted(ck.glob("*.safetensors"))
    assert len(cells) == 3
    for cell in cells:
        load_file(str(cell))  # every cell on disk is complete
    assert [p.name for p in ck.iterdir() if p.name.startswith(".")] == []  # the temporary was removed
    assert sweep(ck) == full  # space freed: the same call resumes, bit-identical


def test_the_run_folder_lock_goes_with_the_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**CFG.__dict__, "alphas": [0.0, 2.0]}))
    with pytest.raises(ConfigError):  # an error after the lock was taken
        run_pipeline(CFG, out, progress=False)
    assert not (out / io.LOCK).exists()

    def interrupt(cfg, folder):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(pipeline, "check_resumable", interrupt)
        run_pipeline(CFG, out, progress=False)
    assert not (out / io.LOCK).exists()
    with io.FolderLock(out):  # a live owner (this process, say another notebook's run)
        with pytest.raises(FolderLockedError, match=rf"pid {os.getpid()} on .*use another --out folder"):
            run_pipeline(CFG, out, progress=False)


def test_a_run_takes_over_a_dead_runs_lock(tmp_path, caplog, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    io.claim_folder(out, "run")
    stale = json.dumps({"pid": dead.pid, "host": io.HOST, "since": "last night"})
    (out / io.LOCK).write_text(stale)
    (out / "config.json").write_text(json.dumps({**CFG.__dict__, "alphas": [0.0, 2.0]}))
    monkeypatch.setattr(pipeline.RunConfig, "load_model", lambda *a, **k: pytest.fail("the model loaded first"))
    with pytest.raises(ConfigError, match="different configuration"):  # refused before the model loads ...
        run_pipeline(CFG, out, progress=False)
    assert (out / io.LOCK).read_text() == stale  # ... and before the folder's lock is touched
    (out / "config.json").unlink()
    monkeypatch.undo()

    class Stop(Exception):
        pass

    def stop(*a, **k):  # where the stages would start: the folder is claimed and locked by then
        raise Stop

    monkeypatch.setattr(pipeline, "_run_stages", stop)
    with pytest.raises(Stop), caplog.at_level("WARNING", logger="persona_gate.io"):
        run_pipeline(CFG, out, progress=False)
    assert f"taking over the lock of a persona-gate run that is no longer running (pid {dead.pid}" in caplog.text
    assert not (out / io.LOCK).exists()
