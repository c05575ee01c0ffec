"""Many devices and many processes: a dispatched model, and a run split over two processes.

* ``device_map`` with some layers offloaded to disk (accelerate installs the same dispatch hooks
  as ``device_map="auto"`` over several GPUs, and runs on CPU): every experiment, patching's
  block re-runs and generation give the numbers of the same model loaded whole;
* ``torchrun --nproc_per_node 2`` (gloo, CPU) of ``persona-gate run``: every stage's result is
  bit-identical to a one-process run of the same configuration;
* a process whose share never arrives is a named error that keeps every finished cell.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import persona_gate as pg
from persona_gate.core.generation import generate
from persona_gate.core.interventions import Ablate, Steer
from persona_gate.experiments import RefusalScorer, eval_groups, reintroduction, steering_sweep, window_projection
from persona_gate.experiments.patching import activation_patching
from persona_gate.grid import GridSpec, Scored, open_store, run_grid
from persona_gate.grid.prefix import cell_logprobs
from persona_gate.grid.shard import WorkerError, Workers, sharing
from persona_gate.guard.intervention import Guard
from persona_gate.results import LabelledResult
from persona_gate.scoring.metrics import refusal_token_ids

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _offloaded(folder: Path, tmp: Path):
    import json

    n = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map |= {f"model.layers.{i}": ("cpu" if i == 0 else "disk") for i in range(n)}
    return pg.load_chat_model(folder, device_map=device_map, offload_folder=tmp / "offload")


def test_a_model_dispatched_with_disk_offload_gives_the_same_numbers(tiny_model_dirs, tmp_path):
    folder = tiny_model_dirs["llama"]
    whole = pg.load_chat_model(folder, device="cpu")
    split = _offloaded(folder, tmp_path)
    hf = split.original_model
    assert set(hf.hf_device_map.values()) == {"cpu", "disk"}
    assert any(p.device.type == "meta" for p in hf.model.layers[1].parameters())  # weights live on disk until used
    pr = pg.fit_persona_and_refusal(whole, n_per_group=4, progress=False)
    assert torch.allclose(
        pg.fit_persona_and_refusal(split, n_per_group=4, progress=False).persona.vectors, pr.persona.vectors, atol=1e-6
    )
    groups = eval_groups(whole, 4)
    ids = refusal_token_ids(whole.tokenizer, ["I cannot", "Sorry"])
    runs = {
        "sweep": lambda m, s: steering_sweep(
            m, pr.persona, layers=[1, 2], alphas=[0.0, 3.0], scorer=s, groups=groups, progress=False
        ),
        "back": lambda m, s: reintroduction(m, pr.persona, pr.refusal, scorer=s, groups=groups, progress=False),
        "windows": lambda m, s: window_projection(
            m, pr.persona, random_seeds=1, scorer=s, groups=groups, progress=False
        ),
        "patching": lambda m, s: activation_patching(
            m, groups["safe/harmful"][:2], groups["compliant/harmful"][:2], ids, positions="roles", progress=False
        ),
    }
    for name, run in runs.items():
        a, b = run(whole, RefusalScorer(whole, tuple(ids))), run(split, RefusalScorer(split, tuple(ids)))
        for key in a.values:
            assert torch.allclose(a[key].double(), b[key].double(), atol=1e-5, equal_nan=True), (name, key)
    # Guard cells through prefix reuse, and generation under an intervention.
    cells = [[Guard(pr.persona, {1: 0.0, 2: 0.0})], [Ablate(pr.persona, layers=[0, 1, 2])]]
    for a, b in zip(
        cell_logprobs(whole, groups["compliant/harmful"], cells)[1],
        cell_logprobs(split, groups["compliant/harmful"], cells)[1],
    ):
        assert torch.allclose(a, b, atol=1e-5)
    from persona_gate.core.interventions import apply

    outs = []
    for m in (whole, split):
        with apply(m, Steer(pr.persona, 2.0, layers=[1])):
            outs.append(
                [g.token_ids for g in generate(m, groups["safe/harmful"][:3], max_new_tokens=6, progress=False)]
            )
    assert outs[0] == outs[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_one_process_result_bit_for_bit(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'model = "organism"\nn_fit = 12\nn_eval = 6\nalphas = [0.0, 2.0, 4.0]\nwindow_width = 3\n'
        "random_seeds = 2\npatch_examples = 3\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "persona_gate.cli.main", "run", "--config", str(cfg), "--no-progress", "--out"]
    subprocess.run([*run, str(tmp_path / "one")], check=True, env=env, capture_output=True, timeout=300)
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_port()),
            *run[1:],
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("results in") == 1  # process 0 reports for both
    for stage in ("steering_sweep", "reintroduction", "window_projection", "patching"):
        assert LabelledResult.load(tmp_path / "one" / stage) == LabelledResult.load(tmp_path / "two" / stage), stage
    for d in ("persona", "refusal"):
        a, b = (pg.DirectionSet.load(tmp_path / r / "directions" / d) for r in ("one", "two"))
        assert torch.equal(a.vectors, b.vectors)
    import json

    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert not (tmp_path / "two" / "cells").exists()


def test_a_share_that_never_arrives_is_a_named_error_and_keeps_this_process_cells(tmp_path, monkeypatch):
    model = pg.load_chat_model("organism")
    pr = pg.fit_persona_and_refusal(model, n_per_group=8, progress=False)
    scorer = RefusalScorer.for_model(model)
    prompts = eval_groups(model, 4)["safe/harmful"]
    spec = GridSpec(
        "test",
        {(k,): Scored("harmful", (Steer(pr.persona, 3.0, layers=[k]),)) for k in (1, 2, 3, 4)},
        prompts={"harmful": prompts},
        derive=lambda key, lp, clean: {"logodds": scorer.from_logprobs(lp)[0]},
    )
    monkeypatch.setattr(Workers, "barrier", lambda self: None)  # process 1 of 2 never shows up

    with sharing(Workers(rank=0, world=2)):
        ck = open_store(tmp_path / "cells", "test", n=1)
        with pytest.raises(WorkerError, match="run the same command again"):
            run_grid(model, spec, store=ck)
    assert sorted(p.stem for p in (tmp_path / "cells").glob("*.safetensors")) == ["1", "3"]  # its own share, kept
    # Alone again, the run computes only what is missing.
    ck = open_store(tmp_path / "cells", "test", n=1)
    got = run_grid(model, spec, store=ck)
    assert ck.restored == 2 and ck.computed == 2 and set(got.cells) == set(spec.cells)


def test_the_slurm_script_starts_the_run_command():
    """The README test checks that the script is the one it shows and valid bash; here: its command parses."""
    import shlex

    from persona_gate.cli.main import build_parser

    body = [
        ln for ln in (REPO / "paper" / "slurm_run.sh").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    command = " ".join(ln.rstrip("\\").strip() for ln in body)
    assert command.split()[0:2] == ["head=$(scontrol", "show"] and "srun torchrun" in command
    parsed = build_parser().parse_args(shlex.split(command.split("-m persona_gate.cli.main", 1)[1]))
    assert parsed.command == "run" and (REPO / parsed.config).exists() and parsed.out
