"""The persona-drift monitor's timeline: persona and refusal projections per turn, flags marked.

Four panels share the turn axis: the persona projection (top) and the refusal projection
(bottom) at one layer, read as the reply mean (left) and at the response-start token (right;
that token's projection also moves with the turn's position in the conversation, so it gets its
own scale). The calibration's threshold is a flat ``threshold`` trace in the flag reading's
panel, and flagged turns are shaded and marked with a cross. Every trace carries
``meta={"value": name}`` so its numbers can be traced to the result.

Example::

    res = monitor(model, conversation, pr.persona, pr.refusal, calibration=cal)
    fig = fig_monitor_timeline(res)               # at the calibration's flag layer
    save_html(fig, "runs/monitor/timeline.html")
"""

from __future__ import annotations

import os

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..monitoring.summary import short_text
from ..results import LabelledResult
from ._common import PlotError, as_result, check, curve, numpy
from .theme import TEMPLATE, colour, rgba

FLAG_COLOUR = "#D55E00"  # vermillion (Okabe-Ito): flagged turns
_READING_LABEL = {"response": "reply mean", "start": "response start"}


def _timeline_layer(r: LabelledResult, layer: int | None) -> int:
    """The layer to draw: ``layer``, else the calibration's flag layer, else the last monitored one."""
    layers = list(r.coords["layer"])
    layer = (
        (r.baselines.get("flag_layer") if r.baselines.get("flag_layer") in layers else layers[-1])
        if layer is None
        else layer
    )
    if layer not in layers:
        raise PlotError(f"layer {layer} was not monitored; the result holds layers {layers}.")
    return layer


def _projection_curves(
    fig: go.Figure, cell: LabelledResult, turns: list, hover: list[str] | None, cols: dict[str, int]
) -> None:
    """One curve per panel: persona (row 1) and refusal (row 2), each reading in its column."""
    for row, what, c in ((1, "persona", 0), (2, "refusal", 4)):
        for reading, col in cols.items():
            name = f"{what}_{reading}"
            fig.add_trace(
                curve(
                    turns,
                    numpy(cell[name]),
                    f"{what}, {_READING_LABEL[reading]}",
                    colour(c if reading == "response" else c + 1),
                    text=hover,
                    meta={"value": name},  # hover only: mode has no "text"
                    hovertemplate="turn %{x}<br>%{y:.3f}<br>%{text}<extra>" + name + "</extra>",
                ),
                row=row,
                col=col,
            )


def _flag_marks(
    fig: go.Figure, r: LabelledResult, cell: LabelledResult, turns: list, layer: int, cols: dict[str, int]
) -> None:
    """The threshold and the flagged turns (crosses) in the flag reading's persona panel; flagged
    turns shaded across every panel."""
    reading = r.baselines.get("flag_reading", "response")
    thr = r.baselines["threshold"][str(layer)]
    fig.add_trace(
        go.Scatter(
            x=turns,
            y=[thr] * len(turns),
            mode="lines",
            name=f"threshold ({_READING_LABEL[reading]})",
            line={"color": "#444444", "dash": "dot", "width": 1.5},
            meta={"value": "threshold"},
            hovertemplate="threshold %{y:.3f}<extra></extra>",
        ),
        row=1,
        col=cols[reading],
    )
    flags = cell["flagged"].tolist()
    flagged = [t for t, f in zip(turns, flags) if f]
    y = numpy(cell[f"persona_{reading}"])
    fig.add_trace(
        go.Scatter(
            x=flagged,
            y=[float(v) for v, f in zip(y, flags) if f],
            mode="markers",
            name="flagged",
            marker={"symbol": "x", "size": 14, "color": FLAG_COLOUR, "line": {"width": 2}},
            meta={"value": "flagged"},
            hovertemplate="turn %{x} flagged<extra></extra>",
        ),
        row=1,
        col=cols[reading],
    )
    for t in flagged:
        fig.add_vrect(
            x0=t - 0.4,
            x1=t + 0.4,
            fillcolor=rgba(FLAG_COLOUR, 0.12),
            line_width=0,
            layer="below",
            row="all",
            col="all",
        )


def fig_monitor_timeline(
    result: LabelledResult | str | os.PathLike, *, layer: int | None = None, title: str | None = None
) -> go.Figure:
    """Persona (top) and refusal (bottom) projection per turn at ``layer`` (default: the flag layer)."""
    r = as_result(result)
    check(
        r,
        ("persona_monitor",),
        ("turn", "layer"),
        ("persona_start", "persona_response", "refusal_start", "refusal_response"),
    )
    layer = _timeline_layer(r, layer)
    cell = r.sel(layer=layer)
    turns = list(r.coords["turn"])
    info = r.config.get("turns", [])
    hover = [
        f"user: {short_text(t.get('user'), 80, '(no reply yet)')}<br>reply: {short_text(t.get('response'), 80, '(no reply yet)')}"
        for t in info
    ] or None
    cols = {"response": 1, "start": 2}
    fig = make_subplots(
        rows=2,
        cols=2,
        shared_xaxes=True,
        vertical_spacing=0.12,
        horizontal_spacing=0.1,
        subplot_titles=[f"{what} · {_READING_LABEL[reading]}" for what in ("persona", "refusal") for reading in cols],
    )
    _projection_curves(fig, cell, turns, hover, cols)
    if "flagged" in r.values:
        _flag_marks(fig, r, cell, turns, layer, cols)
    fig.update_xaxes(tickmode="array", tickvals=turns, range=[min(turns) - 0.5, max(turns) + 0.5])
    fig.update_xaxes(title_text="turn", row=2)
    fig.update_yaxes(title_text=f"persona projection (layer {layer})", row=1, col=1)
    fig.update_yaxes(title_text=f"refusal projection (layer {layer})", row=2, col=1)
    name = r.config.get("conversation") or "conversation"
    fig.update_layout(template=TEMPLATE, title=title or f"Persona-drift monitor: {name}", hovermode="closest")
    return fig
