"""Verdicts on synthetic results (a finding that holds, one that does not, one that straddles) and
the gate window on a real organism run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from persona_gate.experiments.pipeline import DEMO, RunConfig, run_pipeline
from persona_gate.experiments.summary import format_run_summary
from persona_gate.experiments.verdicts import (
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    MIN_EFFECT,
    decide,
    difference_interval,
    gate_window,
    projection_verdict,
    reintroduction_verdict,
    steering_verdict,
)
from persona_gate.results import LabelledResult


def _outcomes(k: int, n: int) -> torch.Tensor:
    return torch.tensor([1.0] * k + [0.0] * (n - k))


def sweep(base_k: int, steered_k: int, n: int) -> LabelledResult:
    """Safe persona: unsteered refusal base_k/n; steering at (layer 2, alpha 4) refuses steered_k/n, alpha 0 = baseline."""
    refused = torch.full((2, 1, 2, n), float("nan"))
    refused[0, 0, 0], refused[0, 0, 1] = _outcomes(base_k, n), _outcomes(steered_k, n)
    refused[1] = 0.0
    return LabelledResult(
        "steering_sweep",
        ("request", "layer", "alpha", "example"),
        {"request": ("harmful", "harmless"), "layer": (2,), "alpha": (0.0, 4.0), "example": tuple(range(n))},
        {"refused": refused, "logodds": torch.zeros_like(refused)},
        baselines={"unsteered_harmful_refusal_rate": base_k / n, "unsteered_harmless_refusal_rate": 0.0},
    )


def back(by_layer: dict[int, int], n: int, base_k: int, comp_k: int) -> LabelledResult:
    layers = tuple(sorted(by_layer))
    refused = torch.stack([_outcomes(by_layer[layer], n) for layer in layers])
    return LabelledResult(
        "reintroduction",
        ("layer", "example"),
        {"layer": layers, "example": tuple(range(n))},
        {"refused": refused, "logodds": torch.zeros_like(refused)},
        baselines={"baseline_refusal_rate": base_k / n, "compliant_refusal_rate": comp_k / n},
    )


def windows(
    persona_k: dict[tuple[int, int], int],
    random_k: int,
    n: int,
    n_layers: int = 6,
    seeds: int = 2,
    base_k: int | None = None,
    comp_k: int = 0,
) -> LabelledResult:
    names = ("persona", *[f"random-{s}" for s in range(seeds)])
    refused = torch.full((len(names), n_layers, n_layers, n), float("nan"))
    for (a, b), k in persona_k.items():
        refused[0, a, b] = _outcomes(k, n)
        refused[1:, a, b] = _outcomes(random_k, n)
    return LabelledResult(
        "window_projection",
        ("direction", "start", "end", "example"),
        {
            "direction": names,
            "start": tuple(range(n_layers)),
            "end": tuple(range(n_layers)),
            "example": tuple(range(n)),
        },
        {"refused": refused, "logodds": torch.zeros_like(refused)},
        baselines={
            "baseline_refusal_rate": (n if base_k is None else base_k) / n,
            "compliant_refusal_rate": comp_k / n,
        },
        config={"windows": [list(w) for w in persona_k]},
    )


def test_difference_interval_matches_newcombes_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, Table II example (a): 56/70 vs 48/80,
    # method 10 (hybrid score): 0.0524 to 0.3339.
    d, low, high = difference_interval(56, 70, 48, 80)
    assert (
        d == pytest.approx(0.2) and low == pytest.approx(0.0524, abs=5e-5) and high == pytest.approx(0.3339, abs=5e-5)
    )


def test_decision_rule():
    assert decide(0.9, 0.8, 1.0) == HOLDS
    assert decide(0.05, -0.05, 0.15) == DOES_NOT_HOLD  # a meaningful effect is ruled out
    assert decide(0.3, -0.05, 0.6) == INCONCLUSIVE  # straddles 0
    assert decide(0.2, 0.05, 0.4) == INCONCLUSIVE  # significant but smaller than MIN_EFFECT, not ruled out
    assert MIN_EFFECT == 0.25


def test_steering_that_holds_does_not_hold_and_straddles():
    v = steering_verdict(sweep(32, 1, 32))
    assert v["verdict"] == HOLDS and v["at"] == {"layer": 2, "alpha": 4.0}
    assert v["unsteered"] == {"rate": 1.0, "k": 32, "n": 32} and v["steered"]["k"] == 1
    d, lo, hi = difference_interval(32, 32, 1, 32)  # one candidate cell: no widening
    assert (v["effect"], v["low"], v["high"]) == (round(d, 4), round(lo, 4), round(hi, 4))
    assert steering_verdict(sweep(32, 31, 32))["verdict"] == DOES_NOT_HOLD
    straddle = steering_verdict(sweep(4, 2, 4))
    assert straddle["verdict"] == INCONCLUSIVE and straddle["low"] < 0 < straddle["high"]
    never = steering_verdict(sweep(0, 0, 32))  # a model that does not refuse: nothing to remove
    assert never["verdict"] == INCONCLUSIVE and never["effect"] is None and "no refusal to remove" in never["reason"]


def test_reintroduction_late_not_early():
    n = 32
    holds = reintroduction_verdict(back({1: 0, 2: 0, 3: 1, 4: 10, 5: 24}, n, n, 0), n_layers=6)
    assert holds["verdict"] == HOLDS and holds["late_layer"] == 5 and holds["early_layer"] == 1
    assert holds["candidates"] == 2  # late layers 4 and 5
    same = reintroduction_verdict(back({1: 80, 2: 80, 3: 80, 4: 80, 5: 84}, 128, 128, 0), n_layers=6)
    assert same["verdict"] == DOES_NOT_HOLD and same["high"] < MIN_EFFECT  # restores as much early as late
    few = reintroduction_verdict(back({1: 20, 2: 20, 3: 20, 4: 20, 5: 21}, n, n, 0), n_layers=6)
    assert few["verdict"] == INCONCLUSIVE  # the same pattern on 32 prompts cannot rule out a 0.25 effect
    no_gate = reintroduction_verdict(back({1: 0, 5: 0}, n, n, 30), n_layers=6)
    assert no_gate["verdict"] == INCONCLUSIVE and "does not remove enough refusal" in no_gate["reason"]


def test_projection_against_the_random_control():
    n = 32
    holds = projection_verdict(windows({(1, 3): 25, (3, 5): 10}, random_k=0, n=n))
    assert holds["verdict"] == HOLDS and holds["window"] == {"start": 1, "end": 3}
    # Bonferroni over the two windows: z for 97.5%.
    from persona_gate.scoring.stats import normal_quantile

    d, lo, hi = difference_interval(25, n, 0, 2 * n, z=normal_quantile(1 - 0.05 / 2))
    assert holds["low"] == round(lo, 4) and holds["random"] == {"rate": 0.0, "k": 0, "n": 2 * n}
    like_random = projection_verdict(windows({(1, 3): 2, (3, 5): 1}, random_k=2, n=n))
    assert like_random["verdict"] == DOES_NOT_HOLD
    straddles = projection_verdict(
        windows({(1, 3): 3, (3, 5): 1}, random_k=1, n=6)
    )  # the interval straddles the control
    assert straddles["verdict"] == INCONCLUSIVE and straddles["low"] < 0 < straddles["high"]


def test_gate_window_from_synthetic_evidence():
    n = 32
    w = windows({(1, 3): 25, (3, 5): 10, (0, 2): 1}, random_k=0, n=n)
    b = back({1: 0, 2: 0, 3: 0, 4: 2, 5: 24}, n, n, 0)
    rows = [
        {"layer": 5, "position": "-1", "restoration": 0.4, "low": 0.1, "high": 0.7, "n": 8, "gate": False},
        {"layer": 2, "position": "[system]", "restoration": 0.1, "low": -0.2, "high": 0.4, "n": 8, "gate": False},
    ]
    g = gate_window(b, w, rows)
    # Only [1, 3] clears: [3, 5] beats random but restores 10/32 < half the gap; width 3 of 6 layers is
    # not narrower than half the model, so nothing is localised.
    assert [(r["start"], r["end"]) for r in g["evidence"]["projection"]["clearing"]] == [(1, 3)]
    assert g["localised"] is False and g["start"] is None and g["evidence"]["placed_by"] is None
    assert g["evidence"]["projection"]["union"] == {"start": 1, "end": 3}
    assert g.statement.startswith("gate: not localised (the narrowest clearing persona-projection windows are 3 layers")
    assert [r["layer"] for r in g["evidence"]["reintroduction"]["layers_restoring"]] == [5]
    assert [c["layer"] for c in g["evidence"]["patching"]["layers_clear_of_zero"]] == [5]
    none = gate_window(back({1: 0, 5: 0}, n, n, 0), windows({(1, 3): 0}, random_k=0, n=n), [])
    assert none["start"] is None and none["evidence"]["projection"]["clearing"] == []
    assert none.statement.startswith("gate: not localised (no persona-projection window clears its random control")


def _layered(persona_k: dict[tuple[int, int], int], n: int = 24, n_layers: int = 8, random_k: int = 0, **kw):
    return windows(persona_k, random_k=random_k, n=n, n_layers=n_layers, **kw)


def test_the_window_rule_takes_the_narrowest_width_and_the_union_connected_to_the_best():
    n, b = 24, back({1: 0}, 24, 24, 0)
    # Width 1 clears at 2, 3 and 6; width 2 clears too, and the whole model: the narrowest width wins,
    # and of its windows those connected to the best (3, with more refusal) form the gate.
    w = _layered({(2, 2): 20, (3, 3): 24, (6, 6): 18, (2, 3): 24, (0, 7): 24, (5, 5): 3}, n=n)
    g = gate_window(b, w, [])
    assert g.localised and (g.start, g.end) == (2, 3) and g["evidence"]["projection"]["narrowest_width"] == 1
    assert g["evidence"]["projection"]["gate_persona"] == round((20 + 24) / 2 / n, 4)
    # Two layers apart is not connected: the best single layer alone.
    g = gate_window(b, _layered({(1, 1): 24, (4, 4): 20}, n=n), [])
    assert (g.start, g.end) == (1, 1) and g.statement.startswith("gate: layer 1 (95% CI start >= ")
    # Only windows as wide as half the model clear: not localised, with the numbers.
    g = gate_window(b, _layered({(0, 3): 24, (4, 7): 24, (2, 2): 2}, n=n), [])
    assert not g.localised and g.start is None and g.end is None and g.low_start is None
    assert g["evidence"]["projection"]["narrowest_width"] == 4 and "not localised" in g.statement
    # A window that beats random by far less than half the safe - compliant gap does not clear.
    g = gate_window(b, _layered({(2, 2): 10}, n=n), [])
    assert g["evidence"]["projection"]["clearing"] == [] and g["evidence"]["projection"]["needed"] == 0.5
    # Random controls that restore as much as the persona: nothing clears.
    g = gate_window(b, _layered({(2, 2): 24, (3, 3): 24}, n=n, random_k=24), [])
    assert not g.localised and g["evidence"]["projection"]["clearing"] == []


def test_the_bootstrap_interval_widens_on_a_noisy_edge():
    b = back({1: 0}, 24, 24, 0)
    sure = gate_window(b, _layered({(3, 3): 24, (4, 4): 24}), [])
    assert (sure.low_start, sure.start, sure.end, sure.high_end) == (3, 3, 4, 4)
    assert sure["evidence"]["projection"]["bootstrap"] == {"resamples": 200, "seed": 0, "localised": 200}
    # Layer 5 restores 14/24 (just over half): resampled prompts often drop or keep it.
    edge = gate_window(b, _layered({(3, 3): 24, (4, 4): 24, (5, 5): 14}), [])
    assert (edge.start, edge.end) == (3, 5) and edge.low_start == 3 and edge.high_end == 5
    again = gate_window(b, _layered({(3, 3): 24, (4, 4): 24, (5, 5): 14}), [], seed=1)
    assert again.to_dict()["evidence"]["projection"]["bootstrap"]["seed"] == 1
    assert gate_window(b, _layered({(3, 3): 24, (4, 4): 24, (5, 5): 14}), []) == edge  # seeded: the same answer


def test_the_gate_window_record_round_trips_and_reads_a_legacy_summary():
    from persona_gate.experiments.verdicts import GateWindow

    g = gate_window(back({1: 0, 6: 24}, 24, 24, 0), _layered({(3, 3): 24, (4, 4): 24}), [])
    d = g.to_dict()
    assert list(d) == ["start", "end", "low_start", "high_end", "localised", "statement", "evidence"]
    assert GateWindow.from_dict(d) == g and GateWindow.from_json(g.to_json()) == g
    assert [label for label, _ in d["evidence"]["lines"]][0] == "persona projection, windows clearing random"
    legacy = {"start": 1, "end": 17, "evidence": {"from": "patching", "projection_windows_beating_random": []}}
    old = GateWindow.from_dict(legacy)
    assert old.to_dict() == legacy and not old.localised and (old.start, old.end) == (1, 17)
    assert old.statement.startswith("gate: layers 1-17 (from patching); recorded before the localisation rule")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("verdict_run")
    cfg = RunConfig.from_dict({**DEMO.__dict__, "n_eval": 16})
    return run_pipeline(cfg, out, progress=False), out


def test_gate_window_and_verdicts_on_the_organism(demo_run):
    summary, out = demo_run
    v, g = summary["verdicts"], summary["gate_window"]
    assert set(v) == {"steering", "reintroduction", "projection"}
    # Recomputed from the saved folders, the same.
    from persona_gate.experiments.patching import gate_layers
    from persona_gate.experiments.verdicts import verdicts

    sweep_r, back_r, win_r, patch_r = (
        LabelledResult.load(out / s) for s in ("steering_sweep", "reintroduction", "window_projection", "patching")
    )
    assert json.loads(json.dumps(verdicts(sweep_r, back_r, win_r, 6).to_dict())) == v
    direction_r = LabelledResult.load(out / "direction_patching")
    recomputed = gate_window(back_r, win_r, gate_layers(patch_r), gate_layers(direction_r))
    assert json.loads(json.dumps(recomputed.to_dict())) == g
    # The organism's persona gates refusal by construction: all three findings hold. Its gate is read
    # from layer 2 on (README, "The three findings on the organism"): the gate window is placed there
    # by persona projection over single layers, with an interval, and adding refusal back works at 5.
    assert [v[k]["verdict"] for k in ("steering", "reintroduction", "projection")] == [HOLDS] * 3
    assert g["localised"] and g["evidence"]["placed_by"] == "persona projection"
    assert g["low_start"] <= g["start"] == 2 <= g["end"] <= g["high_end"] and g["end"] - g["start"] + 1 < 3
    assert 5 in [r["layer"] for r in g["evidence"]["reintroduction"]["layers_restoring"]]
    assert g["statement"] in format_run_summary(summary, out)
    assert all(not math.isnan(x) for x in (v["projection"]["effect"], v["projection"]["low"]))


def test_the_verdict_records_of_a_real_run_are_its_summary_json(demo_run):
    from persona_gate.experiments.summary import RunSummary
    from persona_gate.experiments.verdicts import GateWindow, Verdict, Verdicts

    summary, out = demo_run
    saved = json.loads((out / "summary.json").read_text())
    assert isinstance(summary.verdicts, Verdicts) and isinstance(summary.gate_window, GateWindow)
    assert summary.verdicts.to_dict() == saved["verdicts"] and summary.gate_window.to_dict() == saved["gate_window"]
    assert Verdicts.from_json(summary.verdicts.to_json()) == summary.verdicts
    assert GateWindow.from_json(summary.gate_window.to_json()) == summary.gate_window
    v = summary.verdicts.steering
    assert isinstance(v, Verdict) and v.holds and [label for label, _ in v.arms] == ["unsteered", "steered"]
    assert RunSummary.load(out) == summary
