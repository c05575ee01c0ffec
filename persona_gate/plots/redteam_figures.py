"""The persona red team in one figure: refusal per attack family, projection vs score, AUROC by layer.

Left: the refusal rate of each family (``k / n`` over its attacks x requests) with Wilson 95%
error bars, the greedy-first-token rate as a diamond beside it. Middle: every attacked prompt at
(persona projection, first-token refusal log-odds), coloured by family, a cross where the model
was bypassed. Right: the AUROC of the projection for bypass at each layer (0.5 = chance), the
layer of the middle panel marked. Rates are recomputed from the per-prompt values; the AUROC is
read from the result's baselines. Nothing here runs a model.

Example::

    fig = fig_red_team(rt)                 # a RedTeamResult, its scores result, or a saved folder
    save_html(fig, "runs/redteam/red_team.html")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..redteam.result import families_of
from ..results import LabelledResult
from ._common import PlotError, add_baseline, as_result, check, curve, numpy, point, wilson_rates
from .theme import TEMPLATE, colour, layer_ticks


def _scores(result: Any) -> LabelledResult:
    if isinstance(result, (str, os.PathLike)) and (Path(result) / "scores").is_dir():
        result = Path(result) / "scores"  # a RedTeamResult folder
    return as_result(getattr(result, "scores", result))


def _family_rows(r: LabelledResult) -> dict[str, list[int]]:
    try:
        fam = families_of(r)  # a pure function of the result's config: no model is run
    except ValueError:
        raise PlotError("this red_team result's config lacks 'attacks'; save it again with red_team().") from None
    rows: dict[str, list[int]] = {}
    for i, a in enumerate(r.coords["attack"]):
        rows.setdefault(fam[a], []).append(i)
    return rows


def _rate_panel(fig: go.Figure, r: LabelledResult, rows: dict[str, list[int]], value: str) -> None:
    """Left: each family's refusal rate with Wilson bars; the first-token rate as a diamond beside
    a generated one."""
    names = list(rows)
    ref = r[value]
    stacked = [ref[idx].reshape(1, -1) for idx in rows.values()]
    rate, low, high = (np.concatenate(x) for x in zip(*(wilson_rates(t) for t in stacked)))
    first = np.array([float(r["refused"][idx].double().mean()) for idx in rows.values()])
    n = [int(r["refused"][idx].numel()) for idx in rows.values()]
    fig.add_trace(
        go.Bar(
            x=names,
            y=rate,
            marker_color=[colour(i) for i in range(len(names))],
            name="refusal rate",
            error_y={"type": "data", "symmetric": False, "array": high - rate, "arrayminus": rate - low},
            customdata=np.stack([low, high, n], axis=-1),
            showlegend=False,
            meta={"panel": "rate", "value": value, "low": low.tolist(), "high": high.tolist()},
            hovertemplate="%{x}: %{y:.2f} [%{customdata[0]:.2f}, %{customdata[1]:.2f}], n %{customdata[2]}"
            "<extra></extra>",
        ),
        row=1,
        col=1,
    )
    if value != "refused":
        fig.add_trace(
            go.Scatter(
                x=names,
                y=first,
                mode="markers",
                name="first-token refusal",
                marker={"symbol": "diamond", "size": 10, "color": "#222222"},
                meta={"panel": "rate", "value": "refused"},
            ),
            row=1,
            col=1,
        )
    fig.update_yaxes(title_text="refusal rate (95% Wilson)", range=[0, 1.05], row=1, col=1)


def _scatter_panel(fig: go.Figure, r: LabelledResult, rows: dict[str, list[int]]) -> None:
    """Middle: every attacked prompt at (persona projection, refusal log-odds), a cross where bypassed."""
    attacks, requests = r.coords["attack"], r.coords["request"]
    for fi, (fam, idx) in enumerate(rows.items()):
        proj, lo = numpy(r["projection"][idx]).reshape(-1), numpy(r["logodds"][idx]).reshape(-1)
        byp = r["bypass"][idx].reshape(-1).numpy()
        labels = np.array([f"{attacks[i]} | {q}" for i in idx for q in requests])
        fig.add_trace(
            go.Scatter(
                x=proj,
                y=lo,
                mode="markers",
                name=fam,
                legendgroup=fam,
                text=labels,
                marker={
                    "color": colour(fi),
                    "size": 8,
                    "opacity": 0.75,
                    "symbol": np.where(byp, "x", "circle").tolist(),
                },
                meta={"panel": "scatter", "family": fam},
                hovertemplate="%{text}<br>projection %{x:.2f}<br>log-odds %{y:.2f}<extra></extra>",
            ),
            row=1,
            col=2,
        )
    add_baseline(fig, 0.0, "refuse / comply", row=1, col=2)
    fig.update_xaxes(title_text=f"persona projection ({r.config.get('position', '?')}; + = compliant)", row=1, col=2)
    fig.update_yaxes(title_text="first-token refusal log-odds (x: bypassed)", row=1, col=2)


def _auroc_panel(fig: go.Figure, by_layer: dict[int, Any], layer: Any) -> None:
    """Right: the projection's AUROC for bypass by layer, the middle panel's layer ringed."""
    layers = sorted(by_layer)
    y = np.array([np.nan if by_layer[k] is None else by_layer[k] for k in layers], dtype=float)
    hover = "layer %{x}<br>AUROC %{y:.3f}<extra></extra>"
    auroc_curve = curve(layers, y, "AUROC", colour(4), showlegend=False, meta={"panel": "auroc"}, hovertemplate=hover)
    fig.add_trace(auroc_curve, row=1, col=3)
    if layer in by_layer and by_layer[layer] is not None:
        ring = {"size": 14, "color": colour(5), "symbol": "circle-open", "line": {"width": 3}}
        meta = {"panel": "auroc", "chosen": True}
        fig.add_trace(point(layer, by_layer[layer], f"layer {layer}", ring, showlegend=False, meta=meta), row=1, col=3)
    add_baseline(fig, 0.5, "chance", row=1, col=3)
    fig.update_xaxes(title_text="layer", **layer_ticks(layers), row=1, col=3)
    fig.update_yaxes(title_text="AUROC", range=[0, 1.02], row=1, col=3)


def fig_red_team(result: Any, *, title: str | None = None) -> go.Figure:
    """Refusal rate per family with Wilson bars, projection-vs-score scatter, AUROC by layer."""
    r = _scores(result)
    check(r, ("red_team",), ("attack", "request"), ("logodds", "refused", "bypass", "projection"))
    value = "gen_refusal" if "gen_refusal" in r.values else "refused"
    rows = _family_rows(r)
    layer, auroc = r.config.get("layer"), r.baselines.get("auroc")
    by_layer = {int(k): v for k, v in r.baselines.get("auroc_by_layer", {}).items()}
    fig = make_subplots(
        rows=1,
        cols=3,
        column_widths=[0.26, 0.46, 0.28],
        horizontal_spacing=0.08,
        subplot_titles=[
            "refusal rate per attack family",
            f"persona projection (layer {layer}) vs refusal score",
            "AUROC of the projection for bypass",
        ],
    )
    _rate_panel(fig, r, rows, value)
    _scatter_panel(fig, r, rows)
    _auroc_panel(fig, by_layer, layer)
    auc = "undefined (one outcome only)" if auroc is None else f"{auroc:.2f}"
    fig.update_layout(
        template=TEMPLATE,
        legend={"title": {"text": "family"}, "x": 1.02, "y": 1},
        title=title
        or f"Persona red team: refusal per attack family; the persona projection predicts "
        f"bypass with AUROC {auc} (layer {layer})",
    )
    return fig


__all__ = ["fig_red_team"]
