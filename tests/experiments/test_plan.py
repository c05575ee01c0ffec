"""The cost plan (``persona-gate run --plan``): its counts are what a run executes.

A pipeline run on the organism is counted with hooks -- every block call (rows x sequence
positions it completes, and the forwards that enter the model), every unembedded row -- and
attributed to stages by the pipeline's own log lines; the plan made beforehand must give the
same numbers per stage. Also: finished stages plan as done, the FLOP model adds up, bad
accelerators are named errors before the model loads, and the CLI prints the table.
"""

from __future__ import annotations

import json
import logging

import pytest

import persona_gate.models.loading as loading
from persona_gate.cli.main import main
from persona_gate.errors import ConfigError
from persona_gate.experiments.pipeline import RunConfig, run_pipeline
from persona_gate.experiments.plan import ACCELERATORS, accelerator_flops, format_plan, plan_run

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = RunConfig(
    model="organism", n_fit=12, n_eval=6, alphas=[0.0, 2.0, 4.0], window_width=3, random_seeds=2, patch_examples=2
)
COUNTED = ("forwards", "tokens", "block_tokens", "head_rows")


class _Counter(logging.Handler):
    """Counts what the model runs, per pipeline stage (switched by the pipeline's 'stage X: computing' lines)."""

    def __init__(self, model):
        super().__init__(logging.INFO)
        self.stage = "load"
        self.counts: dict[str, dict[str, int]] = {}
        self.expect = 0
        L = len(model.blocks)

        def enter(j):
            def fn(module, args, kwargs):
                x = args[0] if args else next(iter(kwargs.values()))
                c = self._now()
                if j == 0 or j != self.expect:  # a new pass enters the model here
                    c["forwards"] += x.shape[0]
                    c["tokens"] += x.shape[0] * x.shape[1]

            return fn

        def done(j):
            def fn(module, args, out):
                x = out[0] if isinstance(out, tuple) else out
                self._now()["block_tokens"] += x.shape[0] * x.shape[1]
                self.expect = j + 1 if j + 1 < L else -1

            return fn

        def head(module, args, out):
            self._now()["head_rows"] += out.numel() // out.shape[-1]

        self.handles = [b.register_forward_pre_hook(enter(j), with_kwargs=True) for j, b in enumerate(model.blocks)]
        self.handles += [b.register_forward_hook(done(j)) for j, b in enumerate(model.blocks)]
        self.handles.append(model.unembed.register_forward_hook(head))

    def _now(self):
        return self.counts.setdefault(self.stage, {k: 0 for k in COUNTED})

    def emit(self, record):
        if record.msg == "stage %s: computing":
            self.stage = record.args[0]

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def organism():
    return loading.load_chat_model("organism")


def test_the_plan_counts_what_the_run_executes(organism, tmp_path, monkeypatch):
    plan = plan_run(CFG, organism, probe=False)
    stages = {s["stage"]: s for s in plan["stages"]}
    assert list(stages) == [
        "directions",
        "steering_sweep",
        "reintroduction",
        "window_projection",
        "patching",
        "direction_patching",
    ]
    counter = _Counter(organism)
    log = logging.getLogger("persona_gate.experiments.pipeline")
    log.addHandler(counter)
    old_level = log.level
    log.setLevel(logging.INFO)
    monkeypatch.setattr(loading, "load_chat_model", lambda *a, **k: organism)
    try:
        run_pipeline(CFG, tmp_path / "run", progress=False)
    finally:
        counter.remove()
        log.removeHandler(counter)
        log.setLevel(old_level)
    assert set(counter.counts) - {"load"} == set(stages)
    for name, s in stages.items():
        assert {k: s[k] for k in COUNTED} == counter.counts[name], name
        assert s["exact"] and not s["done"]
    # Cells as the results hold them.
    assert stages["steering_sweep"]["cells"] == 2 * 5 * 3 and stages["window_projection"]["cells"] == 3 * 4
    # A finished run plans as done: nothing left to pay for.
    again = plan_run(CFG, organism, tmp_path / "run", probe=False)
    assert all(s["done"] and s["block_tokens"] == 0 for s in again["stages"])


def test_the_flop_model_and_the_accelerator_estimate(organism):
    plan = plan_run(CFG, organism, probe=True, accelerator="h100", mfu=0.5)
    fm = plan["flops_model"]
    for s in plan["stages"]:
        want = (
            2 * fm["block_parameters"] * s["block_tokens"]
            + 2 * fm["attention_width"] * s["attention"]
            + 2 * fm["d_model"] * fm["vocab"] * s["head_rows"]
        )
        assert s["flops"] == want
        assert s["seconds_on_accelerator"] == pytest.approx(want / (ACCELERATORS["H100"] * 0.5))
        assert s["seconds_here"] >= 0
    assert plan["total"]["flops"] == sum(s["flops"] for s in plan["stages"])
    # One block's parameters, counted from the model itself.
    assert fm["block_parameters"] == sum(p.numel() for p in organism.blocks[0].parameters())
    text = format_plan(plan)
    assert "on H100" in text and "total" in text and "steering_sweep" in text


def test_accelerators_are_named_or_numbers_and_anything_else_is_an_error():
    assert accelerator_flops("A100") == ("A100", 312e12)
    assert accelerator_flops("4e14")[1] == 4e14
    for bad in ("TPU9000", "-3", "nan"):
        with pytest.raises(ConfigError):
            accelerator_flops(bad)


def test_run_plan_on_the_command_line(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'model = "organism"\nn_fit = 8\nn_eval = 4\nalphas = [0.0, 2.0]\nwindow_width = 3\nrandom_seeds = 1\npatch_examples = 1\n'
    )
    assert (
        main(["run", "--plan", "--config", str(cfg), "--flops", "L4", "--plan-json", str(tmp_path / "plan.json")]) == 0
    )
    out = capsys.readouterr().out
    assert "on L4" in out and "window_projection" in out
    assert json.loads((tmp_path / "plan.json").read_text())["accelerator"]["name"] == "L4"
    assert not (tmp_path / "run").exists()
    # A bad accelerator fails before the model loads; --flops without --plan and no --out are named errors.
    monkeypatch.setattr(loading, "load_chat_model", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(["run", "--plan", "--config", str(cfg), "--flops", "TPU9000"]) != 0
    assert "unknown accelerator" in capsys.readouterr().err
    assert main(["run", "--config", str(cfg), "--flops", "H100", "--out", str(tmp_path / "r")]) != 0
    assert "add --plan" in capsys.readouterr().err
    assert main(["run", "--config", str(cfg)]) != 0
    assert "--out" in capsys.readouterr().err


def test_run_plan_loads_the_model_as_the_config_says(tmp_path, monkeypatch):
    """--plan loads through RunConfig.load_model: the config's device_map (or --device-map) reaches the loader."""

    class Loaded(Exception):
        pass

    seen = []

    def fake_load(*args, **kwargs):
        seen.append((args, kwargs))
        raise Loaded

    monkeypatch.setattr(loading, "load_chat_model", fake_load)
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "organism"\ndtype = "bfloat16"\ndevice_map = "auto"\nchat_template = "chatml"\n')
    with pytest.raises(Loaded):
        main(["run", "--plan", "--config", str(cfg)])
    assert seen[-1] == (
        ("organism",),
        {"dtype": "bfloat16", "device": None, "device_map": "auto", "chat_template": "chatml"},
    )
    with pytest.raises(Loaded):
        main(["run", "--plan", "--model", "organism", "--device-map", "balanced"])
    assert seen[-1][1]["device_map"] == "balanced" and seen[-1][1]["device"] is None
    with pytest.raises(Loaded):
        RunConfig(device="cpu").load_model(device="cuda")  # the config's own device wins over the fallback
    assert seen[-1][1]["device"] == "cpu"


def test_the_plan_is_typed_and_its_json_is_the_plan_json(organism):
    from persona_gate.experiments.plan import Plan, PlanStage

    plan = plan_run(CFG, organism, probe=False, accelerator="L4")
    assert isinstance(plan, Plan) and all(isinstance(s, PlanStage) for s in plan.stages)
    d = plan.to_dict()
    assert list(d) == ["model", "n_layers", "stages", "total", "probe", "accelerator", "flops_model", "schema_version"]
    cost = ["forwards", "tokens", "block_tokens", "head_rows", "generated", "attention"]
    want = ["stage", "cells", "done", "exact", *cost, "flops", "seconds_on_accelerator"]  # no probe: no seconds_here
    assert all(list(s) == want for s in d["stages"]) and plan.probe is None and "seconds_here" not in d["total"]
    assert Plan.from_json(plan.to_json()) == plan and Plan.from_dict(d) == plan
    assert plan.stages[0].block_tokens == d["stages"][0]["block_tokens"] and plan["total"] == d["total"]
    assert format_plan(plan) == format_plan(d)
