"""Faults: a crash or a kill never loses finished work, never leaves hooks, never shows a partial file.

* an exception (a simulated out-of-memory) in the middle of each sweep leaves no hook on the
  model and every finished cell in the checkpoint; resuming computes only the rest and gives a
  result bit-identical to an uninterrupted run;
* ``persona-gate run`` killed with SIGKILL at random moments, several times: every file on disk
  loads after every kill, a re-run skips what was finished (stages and cells) and ends with the
  same numbers as an uninterrupted run in another process;
* determinism: the same seed gives bit-identical directions and sweeps.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from faults import SMALL_RUN, run_command, write_config
from safetensors.torch import load_file

import persona_gate.experiments.patching as patching
import persona_gate.grid.prefix as prefix
from persona_gate.core.contrasts import fit_persona_and_refusal
from persona_gate.errors import ResumeMismatchError
from persona_gate.experiments import RefusalScorer, eval_groups, reintroduction, steering_sweep, window_projection
from persona_gate.experiments.patching import activation_patching
from persona_gate.experiments.pipeline import run_pipeline
from persona_gate.experiments.stages import STAGES
from persona_gate.io import KILL_AT_WRITE, MANIFEST, load_artefact
from persona_gate.models.loading import load_chat_model
from persona_gate.results import LabelledResult


@pytest.fixture(scope="module")
def setup():
    model = load_chat_model("organism")
    pr = fit_persona_and_refusal(model, n_per_group=24, progress=False)
    scorer = RefusalScorer.for_model(model)
    groups = eval_groups(model, 6)
    return model, pr, scorer, groups


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _fail_on_call(monkeypatch, module, name: str, k: int) -> None:
    """Make ``module.name`` raise a CUDA-style out-of-memory error on its k-th call (1-based)."""
    original = getattr(module, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def _cells(path: Path) -> int:
    return len(list(path.glob("*.safetensors")))


SWEEPS = {
    # name: (run(setup, checkpoint), re-runs of blocks, cells). A sweep scores its cells by prefix reuse
    # (persona_gate.grid.prefix): each re-run of blocks finishes the cells of one first layer.
    "steering_sweep": (
        lambda s, ck: steering_sweep(
            s[0],
            s[1].persona,
            layers=[2, 4],
            alphas=[0.0, 4.0],
            scorer=s[2],
            groups=s[3],
            progress=False,
            checkpoint=ck,
        ),
        4,
        8,
    ),
    "reintroduction": (
        lambda s, ck: reintroduction(
            s[0], s[1].persona, s[1].refusal, scorer=s[2], groups=s[3], progress=False, checkpoint=ck
        ),
        5,
        5,
    ),
    "window_projection": (
        lambda s, ck: window_projection(
            s[0], s[1].persona, width=3, random_seeds=2, scorer=s[2], groups=s[3], progress=False, checkpoint=ck
        ),
        4,
        12,
    ),
}


@pytest.mark.parametrize("name", list(SWEEPS))
def test_an_exception_mid_sweep_keeps_finished_cells_and_leaves_no_hooks(setup, name, tmp_path, monkeypatch, caplog):
    model, *_ = setup
    run, reruns, total = SWEEPS[name]
    full = run(setup, None)
    hooks_before = _hooks(model)
    ck = tmp_path / "cells"
    with monkeypatch.context() as m:
        _fail_on_call(m, prefix, "_run_chains", reruns // 2 + 1)  # in the middle of the sweep
        with pytest.raises(torch.OutOfMemoryError):
            run(setup, ck)
    assert _hooks(model) == hooks_before  # the interrupted intervention removed its hooks
    done = _cells(ck)
    assert 0 < done < total  # the cells finished before the failure are kept, the rest are not
    with caplog.at_level(logging.INFO, logger="persona_gate.grid.store"):
        resumed = run(setup, ck)
    assert f"{done} cells restored" in caplog.text and f"{total - done} computed" in caplog.text
    assert resumed == full  # bit-identical to the uninterrupted run
    assert _hooks(model) == hooks_before


def test_an_exception_mid_patching_keeps_finished_pairs(setup, tmp_path, monkeypatch, caplog):
    model, _, scorer, groups = setup
    src, tgt = groups["safe/harmful"][:3], groups["compliant/harmful"][:3]
    run = lambda ck: activation_patching(
        model,
        src,
        tgt,
        scorer.token_ids,
        layers=[1, 3, 5],
        positions="roles",  # noqa: E731
        progress=False,
        checkpoint=ck,
    )
    full = run(None)
    hooks_before = _hooks(model)
    calls_per_pair = sum(1 for _ in [1, 3, 5])  # one batched patch per layer (few slots)
    ck = tmp_path / "cells"
    with monkeypatch.context() as m:
        _fail_on_call(m, patching, "_patch_rows", calls_per_pair + 2)  # inside the hook, during pair 2
        with pytest.raises(torch.OutOfMemoryError):
            run(ck)
    assert _hooks(model) == hooks_before
    assert _cells(ck) == 1
    with caplog.at_level(logging.INFO, logger="persona_gate.grid.store"):
        resumed = run(ck)
    assert "1 cells restored" in caplog.text and "2 computed" in caplog.text
    assert torch.equal(resumed["effect"], full["effect"]) and torch.equal(resumed["logodds"], full["logodds"])
    assert resumed == full


def test_a_checkpoint_of_another_computation_is_refused(setup, tmp_path):
    model, pr, scorer, groups = setup
    ck = tmp_path / "cells"
    steering_sweep(
        model, pr.persona, layers=[2], alphas=[0.0], scorer=scorer, groups=groups, progress=False, checkpoint=ck
    )
    with pytest.raises(ResumeMismatchError, match="fresh checkpoint folder"):
        steering_sweep(
            model, pr.persona, layers=[2], alphas=[4.0], scorer=scorer, groups=groups, progress=False, checkpoint=ck
        )
    with pytest.raises(ResumeMismatchError):
        steering_sweep(
            model, pr.refusal, layers=[2], alphas=[0.0], scorer=scorer, groups=groups, progress=False, checkpoint=ck
        )


def test_an_unreadable_cell_is_recomputed(setup, tmp_path):
    model, pr, scorer, groups = setup
    ck = tmp_path / "cells"
    kw = dict(layers=[2], alphas=[0.0, 4.0], scorer=scorer, groups=groups, progress=False)
    full = steering_sweep(model, pr.persona, checkpoint=ck, **kw)
    victim = sorted(ck.glob("*.safetensors"))[0]
    victim.write_bytes(victim.read_bytes()[:20])  # truncated by a disk error, say
    assert steering_sweep(model, pr.persona, checkpoint=ck, **kw) == full
    load_file(str(victim))  # rewritten whole


def test_same_seed_gives_bit_identical_directions_and_sweeps(setup):
    model, pr, scorer, groups = setup
    again = fit_persona_and_refusal(model, n_per_group=24, progress=False)
    for a, b in ((pr.persona, again.persona), (pr.refusal, again.refusal)):
        assert torch.equal(a.vectors, b.vectors) and torch.equal(a.raw_norms, b.raw_norms)
    other = fit_persona_and_refusal(model, n_per_group=24, progress=False, seed=1)
    assert not torch.equal(pr.persona.vectors, other.persona.vectors)  # the seed does choose the prompts
    kw = dict(layers=[2, 4], alphas=[0.0, 2.0], progress=False, n=6, seed=3)
    w = dict(width=3, random_seeds=2, progress=False, n=6, seed=3)
    assert steering_sweep(model, pr.persona, **kw) == steering_sweep(model, pr.persona, **kw)
    assert window_projection(model, pr.persona, **w) == window_projection(model, pr.persona, **w)


# ---------------------------------------------------------------- SIGKILL on the real command line

KILL_CFG = SMALL_RUN


def _check_everything_loads(out: Path) -> None:
    """Every visible file is complete: artefact folders load, cells load, JSON parses."""
    for path in out.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(out).parts):
            continue  # temporaries: written under hidden names, never results
        if path.is_dir() and (path / MANIFEST).exists():
            kind = json.loads((path / MANIFEST).read_text())["kind"]
            load_artefact(path, kind)
        elif path.suffix == ".safetensors" and path.parent.parent.name == "cells":
            load_file(str(path))
        elif path.suffix == ".json" and path.name != MANIFEST:
            json.loads(path.read_text())
        elif path.suffix == ".html":
            assert path.read_text().rstrip().endswith("</html>")


def _finished(out: Path) -> tuple[set[str], dict[str, int]]:
    stages = {s.name for s in STAGES if (out / s.name).is_dir() and (any((out / s.name).rglob(MANIFEST)))}
    cells = {d.name: _cells(d) for d in (out / "cells").iterdir()} if (out / "cells").is_dir() else {}
    return stages, {k: v for k, v in cells.items() if v and k not in stages}


def test_sigkill_at_random_moments_never_loses_or_redoes_work(tmp_path):
    cfg = write_config(tmp_path / "kill.toml")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(
        run_command(cfg, tmp_path / "reference", "-v"), check=True, capture_output=True, env=env, timeout=600
    )

    out, rng = tmp_path / "killed", random.Random(7)
    kills, attempts = 0, 0
    stamps: dict[str, int] = {}
    while True:
        attempts += 1
        assert attempts <= 12, "the run never finished"
        stages_before, cells_before = _finished(out) if out.exists() else (set(), {})
        log_path = tmp_path / f"attempt{attempts}.log"
        # The first attempts die at random moments *inside the work*: the process kills itself at a
        # random one of its next atomic writes (a cell, a stage folder, a JSON file), either just
        # after it lands or with only its temporary written; the last attempt may finish. The
        # moment is chosen by count, not by time, so the machine's load cannot move it.
        kill = f"{rng.randint(2, 16)}{rng.choice(['', ':before'])}" if kills < 4 else ""
        with open(log_path, "w") as log:
            proc = subprocess.run(
                run_command(cfg, out, "-v"),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**env, KILL_AT_WRITE: kill},
                timeout=600,
            )
        rc = None if proc.returncode == -signal.SIGKILL else proc.returncode
        kills += rc is None
        text = log_path.read_text()
        print(
            f"attempt {attempts}: kill at write {kill or '-'}, killed={rc is None}, finished stages {sorted(stages_before)} cells {cells_before}"
        )
        # Nothing finished before this attempt was computed again: no finished stage restarts, and
        # a stage with finished cells resumes from exactly those cells.
        for s in stages_before:
            assert f"stage {s}: computing" not in text
        for s, n in cells_before.items():
            if f"stage {s}: computing" in text:
                what = "activation_patching" if s == "patching" else s
                assert f"resuming {what}: {n} finished cells" in text, text[-3000:]
        _check_everything_loads(out)
        for s in stages_before:  # finished stage folders are never rewritten
            mtime = os.stat(next((out / s).rglob(MANIFEST))).st_mtime_ns
            assert stamps.setdefault(s, mtime) == mtime
        if rc is not None:
            assert rc == 0, text
            break
    assert kills >= 3  # (a run may finish before its k-th write when few are left)
    assert not (out / "cells").exists()  # every stage finished: its cells went into the stage folder
    for s in ("steering_sweep", "reintroduction", "window_projection", "patching"):
        assert LabelledResult.load(out / s) == LabelledResult.load(tmp_path / "reference" / s)
    ref, got = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "reference", out))
    for key in (
        "baseline_refusal_rate",
        "steered_refusal_rate",
        "window_refusal",
        "patching_by_layer",
        "cos_persona_refusal_by_layer",
    ):
        assert got[key] == ref[key]


def test_a_run_folder_refuses_another_configuration(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**KILL_CFG.__dict__, "alphas": [0.0, 2.0]}))
    from persona_gate.experiments.pipeline import ConfigError

    with pytest.raises(ConfigError, match=r"differs in \['alphas'\].*new --out"):
        run_pipeline(KILL_CFG, out, progress=False)
    # The same configuration on another device resumes (start on one GPU, finish on another).
    from persona_gate.experiments.pipeline import check_resumable

    (out / "config.json").write_text(json.dumps({**KILL_CFG.__dict__, "device": "cuda"}))
    check_resumable(KILL_CFG, out)
