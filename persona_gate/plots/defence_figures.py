"""Figures of the two defences: the screening distribution and the guard's bypass/over-refusal front.

``fig_screening``: left, the histogram of example scores with the dataset score and its 95%
interval marked (0 = no push toward compliance); right, the mean shift per layer, the layers
the score averages shaded. ``fig_guard_grid``: every grid cell at (harmless refusal, persona
bypass), the persona cap beside the same cap on a random direction, the Pareto front joined, the
recommended setting and the unguarded model marked. Both read saved results only.

Example::

    fig_screening("runs/screen/screening"); fig_guard_grid(res)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..guard.summary import KIND as GUARD_KIND
from ..guard.summary import pareto_front
from ..screening.summary import KIND as SCREEN_KIND
from ..screening.summary import example_scores
from ._common import as_result, check, line, markers, numpy, point
from .theme import TEMPLATE, colour, rgba


def fig_screening(result: Any, *, bins: int = 60) -> go.Figure:
    r = as_result(result)
    check(r, [SCREEN_KIND], ["example", "layer"], ["score", "shift"])
    s = numpy(example_scores(r))
    ds = r.baselines["dataset_score"]
    layers = list(r.coords["layer"])
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.62, 0.38],
        horizontal_spacing=0.12,
        subplot_titles=("Example scores (P(refuse) x persona shift)", "Mean persona shift per layer"),
    )
    fig.add_trace(
        go.Histogram(
            x=s,
            nbinsx=bins,
            marker_color=colour(0),
            name="examples",
            hovertemplate="score %{x}<br>%{y} examples<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_vrect(x0=ds["low"], x1=ds["high"], fillcolor=rgba(colour(1)), line_width=0, row=1, col=1)
    fig.add_vline(
        x=ds["mean"],
        line_color=colour(1),
        line_width=2,
        row=1,
        col=1,
        annotation_text=f"dataset {ds['mean']:+.4f}",
        annotation_position="top right",
    )
    fig.add_vline(x=0, line_color="#444444", line_dash="dot", row=1, col=1)
    mean = np.nanmean(numpy(r["shift"].double()), axis=0)
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=mean,
            mode="lines+markers",
            marker_color=colour(2),
            name="mean shift",
            hovertemplate="layer %{x}<br>mean shift %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    chosen = r.config["layers"]
    fig.add_vrect(
        x0=min(chosen) - 0.5, x1=max(chosen) + 0.5, fillcolor=rgba("#888888", 0.15), line_width=0, row=1, col=2
    )
    fig.update_xaxes(title_text="example score (> 0: toward compliance where the model refuses)", row=1, col=1)
    fig.update_yaxes(title_text="examples", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    fig.update_yaxes(title_text="shift (persona separations)", row=1, col=2)
    fig.update_layout(
        template=TEMPLATE,
        showlegend=False,
        height=420,
        title=f"Screening {ds['n']} fine-tuning examples along {r.config.get('persona')}",
    )
    return fig


def fig_guard_grid(result: Any) -> go.Figure:
    r = as_result(result)
    check(r, [GUARD_KIND], ["direction", "window", "percentile"], ["persona_bypass", "harmless_refusal"])
    fig = go.Figure()
    for di, (name, symbol) in enumerate((("persona", "circle"), ("random", "x"))):
        d = r.coords["direction"].index(name)
        x, y, text = [], [], []
        for wi, w in enumerate(r.coords["window"]):
            for pi, p in enumerate(r.coords["percentile"]):
                x.append(float(r["harmless_refusal"][d, wi, pi]))
                y.append(float(r["persona_bypass"][d, wi, pi]))
                text.append(f"{name} cap, layers {w}, percentile {p:g}<br>KL {float(r['kl'][d, wi, pi]):.3f}")
        hover = "%{text}<br>harmless refusal %{x:.2f}<br>persona bypass %{y:.2f}<extra></extra>"
        marker = dict(size=9, color=colour(di), symbol=symbol)
        fig.add_trace(markers(x, y, f"{name} direction", marker, text=text, hovertemplate=hover))
    front = r.baselines.get("pareto") or pareto_front(r)
    if front:
        pts = sorted(front, key=lambda c: c["harmless_refusal"])
        x, y = [c["harmless_refusal"] for c in pts], [c["persona_bypass"] for c in pts]
        fig.add_trace(line(x, y, "Pareto front", colour(0), dash="dot"))
    rec = r.baselines.get("recommended")
    if rec:
        star = dict(size=18, symbol="star", color=colour(3), line=dict(width=1, color="#222"))
        hover = f"layers {rec['window'][0]}-{rec['window'][1]}, percentile {rec['percentile']:g}<extra></extra>"
        fig.add_trace(point(rec["harmless_refusal"], rec["persona_bypass"], "recommended", star, hovertemplate=hover))
    base = r.baselines.get("unguarded", {})
    if base:
        diamond = dict(size=14, symbol="diamond", color="#444444")
        fig.add_trace(point(base["harmless_refusal"], base["persona_bypass"], "no guard", diamond))
    budget = r.config.get("max_harmless_refusal")
    if budget is not None:
        fig.add_vline(
            x=budget, line_dash="dot", line_color="#888888", annotation_text=f"over-refusal budget {budget:g}"
        )
    fig.update_xaxes(
        title_text="harmless requests refused (every persona)",
        range=[-0.02, max(0.2, float(np.nanmax(numpy(r["harmless_refusal"]))) + 0.05)],
    )
    fig.update_yaxes(title_text="persona attacks that bypass refusal", range=[-0.03, 1.05])
    fig.update_layout(
        template=TEMPLATE,
        height=480,
        title="Guarding the gate: persona bypass vs over-refusal, persona cap vs random cap",
    )
    return fig
