"""persona_gate.plots: every figure's numbers equal an independent computation from the result.

Results are built by hand with the exact dims, coords, values and baselines the experiment
functions produce (persona_gate/experiments/*.py, persona_gate/patching.py); no model runs.
"""

from __future__ import annotations

import math
import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from persona_gate.plots import (
    BUILDERS,
    PlotError,
    fig_extraction_sites,
    fig_geometry_projections,
    fig_patching,
    fig_reintroduction,
    fig_steering_selection,
    fig_steering_sweep,
    fig_trait_matrix,
    fig_window_projection,
    figure_for,
    layer_ticks,
    save_html,
    save_png,
    token_view,
)
from persona_gate.results import LabelledResult
from persona_gate.scoring.stats import wilson_interval

METRIC = {"name": "refusal at the first response token", "higher_means": "more refusal"}
PROV6 = {"model": {"name": "organism", "n_layers": 6, "d_model": 64}}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sweep_result() -> LabelledResult:
    g = _gen(1)
    shape = (2, 3, 4, 9)  # request, layer, alpha, example
    refused = torch.rand(shape, generator=g) < torch.linspace(0.9, 0.05, 4)[None, None, :, None]
    return LabelledResult(
        kind="steering_sweep",
        dims=("request", "layer", "alpha", "example"),
        coords={
            "request": ("harmful", "harmless"),
            "layer": (1, 2, 3),
            "alpha": (0.0, 1.0, 2.0, 4.0),
            "example": tuple(range(9)),
        },
        values={
            "logodds": torch.randn(shape, generator=g),
            "refused": refused,
            "kl": torch.rand(shape, generator=g),
            "gen_refusal": refused.clone(),
            "gen_degenerate": torch.rand(shape, generator=g) < 0.2,
        },
        baselines={
            "unsteered_harmful_refusal_rate": 0.8889,
            "unsteered_harmless_refusal_rate": 0.1111,
            "unsteered_harmful_logodds": 2.0,
            "unsteered_harmless_logodds": -3.0,
        },
        metric=METRIC,
        config={"direction": "persona", "units": "raw", "n": 9, "seed": 0, "persona": "safe", "max_new_tokens": 8},
        provenance=PROV6,
    )


def reintro_result(provenance: dict | None = None) -> LabelledResult:
    refused = torch.zeros((5, 10), dtype=torch.bool)
    for i, k in enumerate((0, 0, 1, 4, 10)):  # k of 10 refuse at layers 1..5
        refused[i, :k] = True
    return LabelledResult(
        kind="reintroduction",
        dims=("layer", "example"),
        coords={"layer": (1, 2, 3, 4, 5), "example": tuple(range(10))},
        values={"logodds": torch.randn((5, 10), generator=_gen(2)), "refused": refused},
        baselines={
            "baseline_refusal_rate": 1.0,
            "baseline_logodds": 3.0,
            "compliant_refusal_rate": 0.0,
            "compliant_logodds": -2.0,
        },
        metric=METRIC,
        config={"mode": "prompt", "alpha_back": 1.0, "n": 10, "seed": 0},
        provenance=PROV6 if provenance is None else provenance,
    )


WINDOWS = [(0, 2), (1, 3), (2, 4), (3, 5), (0, 5), (4, 5)]  # four of width 3, one of 6, one of 2


def window_result() -> LabelledResult:
    L, m, dirs = 6, 7, ("persona", "random0", "random1", "random2")
    g = _gen(3)
    refused = torch.full((len(dirs), L, L, m), float("nan"))
    for di in range(len(dirs)):
        p = 0.7 if di == 0 else 0.15
        for a, b in WINDOWS:
            refused[di, a, b] = (torch.rand(m, generator=g) < p).float()
    logodds = torch.where(refused.isnan(), refused, torch.randn(refused.shape, generator=g))
    return LabelledResult(
        kind="window_projection",
        dims=("direction", "start", "end", "example"),
        coords={"direction": dirs, "start": tuple(range(L)), "end": tuple(range(L)), "example": tuple(range(m))},
        values={"logodds": logodds, "refused": refused},
        baselines={
            "baseline_refusal_rate": 1.0,
            "baseline_logodds": 3.0,
            "compliant_refusal_rate": 0.0,
            "compliant_logodds": -2.0,
        },
        metric=METRIC,
        config={"windows": [list(w) for w in WINDOWS], "width": None, "random_seeds": 3, "mode": "prompt", "n": m},
        provenance=PROV6,
    )


POSITIONS = ("<bos> (start+0)", "[system]", "\\n (sys+0)", "[user]", "1 (-2)", "\\n (-1)", "[all]")


def patching_result(kind: str = "activation_patching") -> LabelledResult:
    g = _gen(4)
    rest = torch.randn((3, len(POSITIONS), 5), generator=g).double() * 0.4
    rest[1, 2, :] = float("nan")  # a cell where every example's gap vanished
    rest[2, 3, 0] = float("nan")  # one example missing
    values = {"restoration": rest.float()}
    base: dict = {}
    config = {"kind": "resid_pre", "positions": "auto", "token_ids": [5, 6]}
    if kind == "activation_patching":
        values |= {"logodds": rest * 2.0, "effect": rest * 1.5}
        base = {"source_logodds": [2.0] * 5, "target_logodds": [-1.0] * 5}
        config |= {"mode": "denoising", "direction": None}
    return LabelledResult(
        kind=kind,
        dims=("layer", "position", "example"),
        coords={"layer": (0, 1, 2), "position": POSITIONS, "example": tuple(range(5))},
        values=values,
        baselines=base,
        metric={"name": "restoration"},
        config=config,
        provenance=PROV6,
    )


SITE_POS = ("last", "post_instruction[-2]", "mean:system", "mean:user", "mean:response")
EFFECTS = ("steering_refusal", "ablation_refusal", "ablation_harmless_refusal", "cos_refusal")


def sites_result() -> LabelledResult:
    rate = torch.rand((5, 4, 4), generator=_gen(5))
    rate[2, 2, 1] = 0.97  # mean:system at layer 3 restores most
    rate[..., 3] = rate[..., 3] * 2 - 1
    groups = ("safe/harmful", "safe/harmless", "compliant/harmful", "compliant/harmless")
    return LabelledResult(
        kind="extraction_sites",
        dims=("position", "layer", "effect"),
        coords={"position": SITE_POS, "layer": (1, 2, 3, 4), "effect": EFFECTS},
        values={"rate": rate},
        baselines=dict(zip(groups, (1.0, 0.0, 0.0, 0.0))),
        metric=METRIC,
        config={"alphas": [1.0, 2.0, 4.0], "n": 8},
        provenance=PROV6,
    )


def geometry_results() -> tuple[LabelledResult, LabelledResult]:
    cos = LabelledResult(
        kind="geometry_cosine",
        dims=("layer",),
        coords={"layer": (1, 2, 3, 4, 5)},
        values={
            "persona_refusal": torch.tensor([0.1, -0.2, -0.4, -0.5, -0.3]),
            "persona_last_refusal": torch.tensor([0.0, -0.1, -0.2, -0.3, -0.1]),
        },
        config={"persona_position": "mean:system", "refusal_position": "last"},
    )
    groups = ("compliant/harmful", "compliant/harmless", "safe/harmful", "safe/harmless")
    g = _gen(6)
    proj = LabelledResult(
        kind="geometry_projections",
        dims=("group", "example", "layer"),
        coords={"group": groups, "example": tuple(range(6)), "layer": (1, 2, 3, 4, 5)},
        values={
            "persona_projection": torch.randn((4, 6, 5), generator=g),
            "refusal_projection": torch.randn((4, 6, 5), generator=g),
        },
        config={"persona_position": "mean:system", "refusal_position": "last", "split": "test", "n": 6},
    )
    return cos, proj


TRAITS = ("warmth", "deference", "candour")


def trait_results() -> tuple[LabelledResult, LabelledResult]:
    g = _gen(7)
    cosines = LabelledResult(
        kind="trait_cosines",
        dims=("trait", "layer"),
        coords={"trait": TRAITS, "layer": (1, 2, 3, 4)},
        values={
            "cos_refusal": torch.rand((3, 4), generator=g) * 2 - 1,
            "cos_persona": torch.rand((3, 4), generator=g) * 2 - 1,
            "raw_norm": torch.rand((3, 4), generator=g),
        },
        config={"position": "mean:system"},
    )
    vec = torch.nn.functional.normalize(torch.randn((3, 4, 16), generator=g, dtype=torch.float64), dim=-1)
    matrix = LabelledResult(
        kind="trait_matrix",
        dims=("trait", "other", "layer"),
        coords={"trait": TRAITS, "other": TRAITS, "layer": (1, 2, 3, 4)},
        values={"cos": torch.einsum("ild,jld->ijl", vec, vec).float()},
        config={"position": "mean:system"},
    )
    return cosines, matrix


def selection_result(chosen: bool = True) -> LabelledResult:
    g = _gen(8)
    rate, kl = torch.rand((4, 3), generator=g), torch.rand((4, 3), generator=g) * 0.2
    eligible = (kl <= 0.1) & (rate <= 0.75)
    eligible[1, 2] = True
    return LabelledResult(
        kind="steering_selection",
        dims=("layer", "alpha"),
        coords={"layer": (1, 2, 3, 4), "alpha": (1.0, 2.0, 4.0)},
        values={
            "refusal_rate": rate,
            "logodds": torch.randn((4, 3), generator=g),
            "kl_harmless": kl,
            "eligible": eligible,
        },
        baselines={
            "unsteered_refusal_rate": 1.0,
            "chosen": {"layer": 2, "alpha": 4.0, "refusal_rate": round(float(rate[1, 2]), 4), "kl_harmless": 0.01}
            if chosen
            else None,
        },
        metric={"name": "refusal"},
        config={"kl_max": 0.1, "exclude_last": 0.2, "min_drop": 0.25, "n": 8},
    )


def red_team_result() -> LabelledResult:
    """As persona_gate.redteam.harness.red_team builds it (first-token labels); the real one: tests/redteam/test_redteam.py."""
    g = _gen(9)
    attacks = [
        {"id": f"{f}/a{i}", "family": f} for f, k in (("none", 1), ("direct", 2), ("persona", 2)) for i in range(k)
    ]
    refused = torch.rand((5, 6), generator=g) < torch.tensor([0.9, 0.8, 0.8, 0.2, 0.1])[:, None]
    return LabelledResult(
        kind="red_team",
        dims=("attack", "request"),
        coords={"attack": [a["id"] for a in attacks], "request": [f"r{i}" for i in range(6)]},
        values={
            "logodds": torch.randn((5, 6), generator=g),
            "refused": refused,
            "bypass": ~refused,
            "projection": torch.randn((5, 6), generator=g),
        },
        baselines={"auroc": 0.8, "auroc_by_layer": {"0": 0.5, "1": 0.8, "2": None}},
        config={"attacks": attacks, "layer": 1},
    )


def monitor_result() -> LabelledResult:
    """As persona_gate.monitoring.monitor.monitor builds it (calibrated); the real one: tests/monitoring/test_monitor.py."""
    g = _gen(10)
    p = torch.randn((3, 2), generator=g, dtype=torch.float64) + torch.tensor([[0.0], [0.0], [5.0]], dtype=torch.float64)
    return LabelledResult(
        kind="persona_monitor",
        dims=("turn", "layer"),
        coords={"turn": (1, 2, 3), "layer": (2, 3)},
        values={
            "persona_start": torch.randn((3, 2), generator=g),
            "persona_response": p.float(),
            "refusal_start": torch.randn((3, 2), generator=g),
            "refusal_response": torch.randn((3, 2), generator=g),
            "flagged": p > 2.5,
        },
        baselines={"threshold": {"2": 2.5, "3": 2.5}, "flag_reading": "response", "flag_layer": 3},
        config={
            "turns": [{"turn": t, "message_index": 2 * t, "user": f"u{t}", "response": f"r{t}"} for t in (1, 2, 3)]
        },
    )


def comparison_result() -> LabelledResult:
    """As persona_gate.compare.checkpoints.compare_checkpoints builds it; the real one: tests/compare/test_compare.py."""
    from persona_gate.compare.checkpoints import DIRECTION_VALUES, SHIFT_LAST_VALUES, SHIFT_VALUES

    g = _gen(11)
    refusal = {
        ck: {"safe/harmful": {"k": k, "n": 8}, "safe/harmless": {"k": 0, "n": 8}} for ck, k in (("a", 8), ("b", 1))
    }
    return LabelledResult(
        kind="checkpoint_comparison",
        dims=("checkpoint", "layer"),
        coords={"checkpoint": ("a", "b"), "layer": (0, 1, 2)},
        values={v: torch.rand((2, 3), generator=g) for v in (*DIRECTION_VALUES, *SHIFT_VALUES, *SHIFT_LAST_VALUES)},
        baselines={"refusal": refusal},
        config={"model_a": "organism", "model_b": "runs/compliant"},
    )


def screening_result() -> LabelledResult:
    """As persona_gate.screening.screen builds it; the real one: tests/screening/test_screening.py."""
    from persona_gate.screening.summary import summarise

    g = _gen(12)
    shift = torch.randn((20, 4), generator=g) * 0.1
    p = torch.rand((20, 1), generator=g).expand(20, 4).contiguous()
    r = LabelledResult(
        kind="screening",
        dims=("example", "layer"),
        coords={"example": tuple(f"line-{i}" for i in range(20)), "layer": (0, 1, 2, 3)},
        values={
            "shift": shift,
            "p_refuse": p,
            "score": shift * p,
            "data_projection": shift,
            "own_projection": torch.zeros(20, 4),
        },
        config={
            "layers": [2, 3],
            "persona": "persona",
            "examples": [{"id": f"line-{i}", "line": i, "user": "u", "reply": "r"} for i in range(20)],
        },
    )
    return LabelledResult(r.kind, r.dims, r.coords, r.values, summarise(r), r.metric, r.config)


def guard_result() -> LabelledResult:
    """As persona_gate.guard.grid.guard_grid builds it; the real one: tests/guard/test_guard.py."""
    from persona_gate.guard.summary import VALUES, pareto_front, recommend

    g = _gen(13)
    r = LabelledResult(
        kind="guard_grid",
        dims=("direction", "window", "percentile"),
        coords={"direction": ("persona", "random"), "window": ("0-1", "1-2", "2-3"), "percentile": (50.0, 90.0)},
        values={v: torch.rand((2, 3, 2), generator=g) * (1.0 if v != "harmless_refusal" else 0.1) for v in VALUES},
        baselines={
            "unguarded": {"persona_bypass": 0.95, "direct_bypass": 0.0, "plain_bypass": 0.0, "harmless_refusal": 0.02},
            "n": {"persona_bypass": 40, "harmless_refusal": 40},
        },
        config={"persona": "persona", "max_harmless_refusal": 0.05},
    )
    extra = {"pareto": pareto_front(r), "recommended": recommend(r, max_kl=1.0)}
    return LabelledResult(r.kind, r.dims, r.coords, r.values, {**r.baselines, **extra}, r.metric, r.config)


def all_results() -> list[LabelledResult]:
    return [
        sweep_result(),
        reintro_result(),
        window_result(),
        patching_result(),
        patching_result("attribution_patching"),
        sites_result(),
        *geometry_results(),
        *trait_results(),
        selection_result(),
        red_team_result(),
        monitor_result(),
        comparison_result(),
        screening_result(),
        guard_result(),
    ]


def trace(fig: go.Figure, name: str):
    hits = [t for t in fig.data if t.name == name]
    assert len(hits) == 1, f"{len(hits)} traces named {name!r}: {[t.name for t in fig.data]}"
    return hits[0]


def arr(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


# ---- steering sweep ------------------------------------------------------------------------


def test_sweep_rates_and_wilson_bands_match_an_independent_count():
    r = sweep_result()
    fig = fig_steering_sweep(r)
    refused = r["refused"]
    for ri, q in enumerate(r.coords["request"]):
        for li, layer in enumerate(r.coords["layer"]):
            line = next(t for t in fig.data if t.meta == {"request": q, "layer": layer, "value": "refused"})
            k = refused[ri, li].sum(-1)  # [alpha]
            n = refused.shape[-1]
            np.testing.assert_allclose(arr(line.y), (k.double() / n).numpy(), rtol=0, atol=1e-12)
            assert list(line.x) == list(r.coords["alpha"])
            bands = [wilson_interval(int(kk), n) for kk in k]
            np.testing.assert_allclose(arr(trace(fig, f"{q} layer {layer} low").y), [b[0] for b in bands], atol=1e-12)
            np.testing.assert_allclose(arr(trace(fig, f"{q} layer {layer} high").y), [b[1] for b in bands], atol=1e-12)
            deg = next(t for t in fig.data if t.meta == {"request": q, "layer": layer, "value": "gen_degenerate"})
            np.testing.assert_allclose(arr(deg.y), r["gen_degenerate"][ri, li].double().mean(-1).numpy(), atol=1e-12)
    # one dashed baseline per panel, at the unsteered rates
    lines = sorted(s.y0 for s in fig.layout.shapes if s.line.dash == "dash")
    assert lines == [0.1111, 0.8889]
    assert len(fig.layout.annotations) >= 2  # the two panel titles


def test_sweep_without_generated_labels_has_no_degenerate_lines():
    r = sweep_result()
    r = LabelledResult(
        r.kind,
        r.dims,
        r.coords,
        {k: v for k, v in r.values.items() if not k.startswith("gen_")},
        r.baselines,
        r.metric,
        r.config,
    )
    fig = fig_steering_sweep(r, requests=("harmful",))
    assert not [t for t in fig.data if t.meta and t.meta.get("value") == "gen_degenerate"]
    assert {t.meta["request"] for t in fig.data if t.meta} == {"harmful"}


def test_wilson_rates_skip_nan_examples():
    from persona_gate.plots._common import wilson_rates

    t = torch.tensor([[1.0, 0.0, float("nan"), 1.0], [float("nan")] * 4])
    rate, low, high = wilson_rates(t)
    assert rate[0] == pytest.approx(2 / 3) and (low[0], high[0]) == wilson_interval(2, 3)
    assert np.isnan(rate[1]) and np.isnan(low[1]) and np.isnan(high[1])


# ---- re-introduction -----------------------------------------------------------------------


def test_reintroduction_rates_bands_baselines_and_thirds():
    r = reintro_result()
    fig = fig_reintroduction(r)
    line = trace(fig, "refusal with refusal added back")
    np.testing.assert_allclose(arr(line.y), [0, 0, 0.1, 0.4, 1.0])
    np.testing.assert_allclose(arr(trace(fig, "restored low").y), [wilson_interval(k, 10)[0] for k in (0, 0, 1, 4, 10)])
    np.testing.assert_allclose(
        arr(trace(fig, "restored high").y), [wilson_interval(k, 10)[1] for k in (0, 0, 1, 4, 10)]
    )
    rects = [(s.x0, s.x1) for s in fig.layout.shapes if s.type == "rect"]
    assert rects == [(-0.5, 1.5), (3.5, 5.5)]  # 6 layers: early = 0, 1; late = 4, 5
    assert sorted(s.y0 for s in fig.layout.shapes if s.line.dash == "dash") == [0.0, 1.0]


def test_reintroduction_layer_count_falls_back_to_coords():
    fig = fig_reintroduction(reintro_result(provenance={}))  # layers 1..5 -> 6 layers
    assert [(s.x0, s.x1) for s in fig.layout.shapes if s.type == "rect"] == [(-0.5, 1.5), (3.5, 5.5)]
    big = reintro_result(provenance={"model": {"n_layers": 9}})
    assert [(s.x0, s.x1) for s in fig_reintroduction(big).layout.shapes if s.type == "rect"] == [
        (-0.5, 2.5),
        (5.5, 8.5),
    ]


def test_reintroduction_logodds_shows_the_mean():
    r = reintro_result()
    fig = fig_reintroduction(r, value="logodds")
    np.testing.assert_allclose(arr(fig.data[0].y), r["logodds"].double().mean(-1).numpy(), rtol=1e-6)


# ---- window projection ---------------------------------------------------------------------


def test_window_heatmap_is_the_persona_mean_with_nan_blank():
    r = window_result()
    fig = fig_window_projection(r)
    heat = next(t for t in fig.data if isinstance(t, go.Heatmap))
    want = torch.nanmean(r["refused"][0].double(), dim=-1).numpy()  # [start, end]
    z = arr(heat.z)
    assert np.array_equal(np.isnan(z), np.isnan(want))
    assert np.isnan(z).sum() == 36 - len(WINDOWS)
    np.testing.assert_allclose(z[~np.isnan(z)], want[~np.isnan(want)], atol=1e-12)
    assert list(heat.x) == list(range(6)) and list(heat.y) == list(range(6))


def test_window_curve_uses_the_most_common_width_and_random_min_max():
    r = window_result()
    fig = fig_window_projection(r)
    starts = [0, 1, 2, 3]  # width 3 is the most common
    per = torch.nanmean(r["refused"].double(), dim=-1)  # [direction, start, end]
    curve = trace(fig, "persona projected out")
    assert list(curve.x) == starts
    np.testing.assert_allclose(arr(curve.y), [float(per[0, a, a + 2]) for a in starts], atol=1e-12)
    rand = torch.stack([per[1:, a, a + 2] for a in starts], dim=1)  # [random, start]
    np.testing.assert_allclose(arr(trace(fig, "random directions low").y), rand.min(0).values.numpy(), atol=1e-12)
    np.testing.assert_allclose(arr(trace(fig, "random directions high").y), rand.max(0).values.numpy(), atol=1e-12)
    other = fig_window_projection(r, width=2)
    assert list(trace(other, "persona projected out").x) == [4]
    with pytest.raises(PlotError, match="widths run"):
        fig_window_projection(r, width=4)


# ---- patching ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["activation_patching", "attribution_patching"])
def test_patching_heatmap_is_the_example_mean_with_nan_and_labels(kind):
    r = patching_result(kind)
    fig = figure_for(r)
    heat = fig.data[0]
    want = r.mean("example")["restoration"].double().numpy()
    z = arr(heat.z)
    assert np.array_equal(np.isnan(z), np.isnan(want)) and np.isnan(z[1, 2])
    np.testing.assert_allclose(z[~np.isnan(z)], want[~np.isnan(want)], rtol=1e-6)
    assert list(heat.x) == list(POSITIONS) and list(heat.y) == [0, 1, 2]
    assert fig.layout.xaxis.type == "category"  # "1 (-2)"-style labels must not become numbers
    assert heat.zmid == 0 and heat.zmin == -heat.zmax and heat.zmax >= 1
    assert (
        "layer %{y}" in heat.hovertemplate and "position %{x}" in heat.hovertemplate and "95% CI" in heat.hovertemplate
    )
    # hover interval: mean +- z sd / sqrt(n) over the finite examples (z the exact 97.5% normal
    # quantile, from the standard library, not persona_gate), as gate_layers
    x = r["restoration"].double()[2, 3]
    x = x[torch.isfinite(x)]
    from statistics import NormalDist

    half = NormalDist().inv_cdf(0.975) * float(x.std()) / math.sqrt(len(x))
    low, high, n = np.asarray(heat.customdata)[2, 3]
    assert (low, high, n) == pytest.approx((float(x.mean()) - half, float(x.mean()) + half, 4))


def test_patching_gate_layers_agree_with_hover_interval():
    from persona_gate.experiments.patching import gate_layers

    r = patching_result()
    heat = fig_patching(r).data[0]
    for row in gate_layers(r, exclude=("[all]",)):
        li, pi = (0, 1, 2).index(row["layer"]), POSITIONS.index(row["position"])
        low, high, _ = np.asarray(heat.customdata)[li, pi]
        assert (low, high) == pytest.approx((row["low"], row["high"]))


def test_patching_exclude_drops_positions():
    fig = fig_patching(patching_result(), exclude=("[all]",))
    assert list(fig.data[0].x) == list(POSITIONS[:-1]) and arr(fig.data[0].z).shape == (3, len(POSITIONS) - 1)


# ---- analyses ------------------------------------------------------------------------------


def test_geometry_cosine_lines():
    cos, _ = geometry_results()
    fig = figure_for(cos)
    for t in fig.data:
        np.testing.assert_allclose(arr(t.y), cos[t.meta["value"]].double().numpy())
        assert list(t.x) == [1, 2, 3, 4, 5]


def test_geometry_projections_boxes_and_slider():
    _, proj = geometry_results()
    fig = fig_geometry_projections(proj, layer=2)
    assert len(fig.data) == 2 * 4
    for t in fig.data:
        gi = proj.coords["group"].index(t.meta["group"])
        np.testing.assert_allclose(arr(t.y), proj[t.meta["value"]][gi, :, 1].double().numpy(), rtol=1e-6)
    full = fig_geometry_projections(proj)
    assert len(full.data) == 5 * 2 * 4 and len(full.layout.sliders[0].steps) == 5
    assert {t.meta["layer"] for t in full.data if t.visible} == {3}  # the middle layer first
    with pytest.raises(PlotError, match="not in the result"):
        fig_geometry_projections(proj, layer=9)


def test_trait_figures():
    cosines, matrix = trait_results()
    fig = figure_for(cosines)
    np.testing.assert_allclose(arr(fig.data[0].z), cosines["cos_refusal"].double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(arr(fig.data[1].z), cosines["cos_persona"].double().numpy(), rtol=1e-6)
    assert list(fig.data[0].y) == list(TRAITS)
    m = fig_trait_matrix(matrix)  # middle of (1, 2, 3, 4) is 3
    np.testing.assert_allclose(arr(m.data[0].z), matrix["cos"][:, :, 2].double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.diag(arr(m.data[0].z)), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        arr(fig_trait_matrix(matrix, layer=1).data[0].z), matrix["cos"][:, :, 0].double().numpy(), rtol=1e-6
    )


def test_extraction_sites_bars_at_the_best_ablation_layer_and_heatmap():
    r = sites_result()
    fig = fig_extraction_sites(r)
    assert {t.meta["layer"] for t in fig.data} == {3}
    for t in fig.data:
        ei = EFFECTS.index(t.meta["effect"])
        np.testing.assert_allclose(arr(t.y), r["rate"][:, 2, ei].double().numpy(), rtol=1e-6)
        assert list(t.x) == list(SITE_POS)
    heat = fig_extraction_sites(r, style="heatmap", effects=EFFECTS)
    assert len(heat.data) == 4
    np.testing.assert_allclose(arr(heat.data[1].z), r["rate"][:, :, 1].double().numpy(), rtol=1e-6)
    with pytest.raises(PlotError, match="style"):
        fig_extraction_sites(r, style="pie")


def test_steering_selection_marks_eligible_and_chosen():
    r = selection_result()
    fig = fig_steering_selection(r)
    heat = fig.data[0]
    np.testing.assert_allclose(arr(heat.z), r["refusal_rate"].double().numpy(), rtol=1e-6)
    assert np.asarray(heat.text)[0, 0] == f"KL {float(r['kl_harmless'][0, 0]):.2g}"
    el = trace(fig, "eligible")
    li, ai = r["eligible"].nonzero(as_tuple=True)
    assert sorted(zip(el.y, el.x)) == sorted(
        zip((r.coords["layer"][i] for i in li), (r.coords["alpha"][j] for j in ai))
    )
    star = trace(fig, "chosen")
    assert (list(star.x), list(star.y)) == ([4.0], [2])
    assert "chosen" not in [t.name for t in fig_steering_selection(selection_result(chosen=False)).data]


# ---- the defences: screening distribution, guard front -------------------------------------


def test_screening_histogram_and_layer_means_match_the_values():
    from persona_gate.plots import fig_screening

    r = screening_result()
    fig = fig_screening(r)
    hist = trace(fig, "examples")
    np.testing.assert_allclose(arr(hist.x), (r["score"][:, 2:].double().mean(-1)).numpy(), atol=1e-6)
    line = trace(fig, "mean shift")
    np.testing.assert_allclose(arr(line.y), r["shift"].double().mean(0).numpy(), atol=1e-6)
    ds = r.baselines["dataset_score"]
    assert [s.x0 for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1][0] == pytest.approx(ds["mean"])


def test_guard_points_front_and_recommendation_match_the_values():
    from persona_gate.plots import fig_guard_grid

    r = guard_result()
    fig = fig_guard_grid(r)
    for d, name in enumerate(("persona", "random")):
        t = trace(fig, f"{name} direction")
        np.testing.assert_allclose(arr(t.x), r["harmless_refusal"][d].reshape(-1).double().numpy(), atol=1e-6)
        np.testing.assert_allclose(arr(t.y), r["persona_bypass"][d].reshape(-1).double().numpy(), atol=1e-6)
    front = trace(fig, "Pareto front")
    assert sorted(zip(front.x, front.y)) == sorted(
        (c["harmless_refusal"], c["persona_bypass"]) for c in r.baselines["pareto"]
    )
    star = trace(fig, "recommended")
    rec = r.baselines["recommended"]
    assert (star.x[0], star.y[0]) == (rec["harmless_refusal"], rec["persona_bypass"])
    assert (trace(fig, "no guard").y[0]) == 0.95


# ---- dispatch, errors, round trip, export --------------------------------------------------


def test_figure_for_dispatches_every_kind():
    results = all_results()
    assert {r.kind for r in results} == set(BUILDERS)
    for r in results:
        fig = figure_for(r)
        assert isinstance(fig, go.Figure) and len(fig.data) > 0, r.kind
        assert fig.layout.template.layout.paper_bgcolor == "white"
        assert fig.to_json()  # serialises, NaN cells included


def test_unknown_kind_and_wrong_kind_raise_clearly():
    odd = LabelledResult("mystery", ("layer",), {"layer": (1,)}, {"x": torch.zeros(1)})
    with pytest.raises(PlotError, match=r"known kinds: \[.*'steering_sweep'"):
        figure_for(odd)
    with pytest.raises(PlotError, match="figure_for"):
        fig_steering_sweep(reintro_result())
    with pytest.raises(PlotError, match="lacks dims"):
        fig_patching(patching_result().mean("example").with_values())


def test_saved_folder_gives_the_same_figure(tmp_path):
    for i, r in enumerate(all_results()):
        path = r.save(tmp_path / f"r{i}")
        a, b = figure_for(r), figure_for(path)
        assert len(a.data) == len(b.data)
        for ta, tb in zip(a.data, b.data):
            assert ta.name == tb.name and ta.meta == tb.meta
            for key in ("x", "y", "z", "customdata"):
                if getattr(ta, key, None) is not None:
                    dtype = float if key in ("z", "customdata") or key == "y" and ta.type != "heatmap" else object
                    np.testing.assert_array_equal(np.asarray(ta[key], dtype=dtype), np.asarray(tb[key], dtype=dtype))
        assert a.layout.shapes == b.layout.shapes


def test_save_html_inline_works_offline_and_holds_the_data(tmp_path):
    fig = figure_for(patching_result())
    path = save_html(fig, tmp_path / "sub" / "patching.html")
    html = path.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\ssrc=", html)  # nothing fetched: plotly.js is inline
    assert len(html) > 1_000_000 and "Plotly.newPlot" in html  # plotly.js itself is inside
    assert "[system]" in html and "sys+0" in html
    small = save_html(fig, tmp_path / "cdn.html", include_plotlyjs="cdn").read_text(encoding="utf-8")
    assert re.search(r'<script[^>]*\ssrc="https://cdn\.plot\.ly/', small) and len(small) < 200_000
    with pytest.raises(PlotError, match="inline"):
        save_html(fig, tmp_path / "x.html", include_plotlyjs="directory")


def test_save_png_without_kaleido_points_to_html(tmp_path):
    import importlib.util

    if importlib.util.find_spec("kaleido") is not None:
        pytest.skip("kaleido is installed here")
    with pytest.raises(PlotError, match="save_html"):
        save_png(go.Figure(), tmp_path / "x.png")


def test_layer_ticks_thin_deep_models():
    assert layer_ticks(range(6))["tickvals"] == list(range(6))
    t = layer_ticks(range(48))
    assert len(t["tickvals"]) <= 16 and t["tickvals"][0] == 0 and t["tickvals"][-1] == 47
    assert t["ticktext"] == [str(x) for x in t["tickvals"]]


# ---- tokens --------------------------------------------------------------------------------


def test_token_view_one_and_two_directions():
    toks = ["<bos>", "You", " are", " helpful"]
    one = token_view(toks, torch.tensor([0.5, -2.0, 1.0, 0.0]))
    html = str(one)
    assert "ColoredTokens" in html and " helpful" in html and '"minValue": -2.0' in html and '"maxValue": 2.0' in html
    assert "CircuitsVis.ColoredTokens" in one.local_src  # the offline variant inlines the JS bundle
    two = token_view(toks, torch.tensor([[0.1, -0.3], [1.2, 0.4], [0.9, 0.0], [0.0, 0.2]]))
    assert "ColoredTokensMulti" in str(two) and '"persona"' in str(two) and '"refusal"' in str(two)
    assert hasattr(two, "_repr_html_") and two.show_code() == str(two)
    with pytest.raises(PlotError, match="one value per token"):
        token_view(toks, torch.zeros(3))
    with pytest.raises(PlotError, match="label"):
        token_view(toks, torch.zeros(4, 3), labels=["a"])
