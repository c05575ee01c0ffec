"""Figures of the paper's three causal experiments: steering sweep, re-introduction, window projection.

Refusal rates are ``k / n`` over the examples of a cell with Wilson 95% bands (see
:mod:`persona_gate.plots._common`); reference points (unsteered, safe baseline, compliant state)
are dashed horizontal lines taken from ``result.baselines``.

Example::

    fig = fig_steering_sweep(sweep)                 # refusal vs alpha, one line per layer
    fig = fig_reintroduction(back)                  # restored refusal per layer, early/late shaded
    fig = fig_window_projection(windows)            # start x end heatmap + fixed-width curve
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..results import LabelledResult
from ._common import (
    RATE_COLOURS,
    PlotError,
    add_band,
    add_baseline,
    as_result,
    check,
    curve,
    heatmap,
    line,
    n_layers,
    numpy,
    wilson_rates,
)
from .theme import TEMPLATE, colour, layer_ticks

REFUSAL_AXIS = "refusal rate (fraction of prompts)"


def fig_steering_sweep(
    result: LabelledResult | str | os.PathLike,
    *,
    value: str = "refused",
    requests: Sequence[str] = ("harmful", "harmless"),
    layers: Sequence[int] | None = None,
    degenerate: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Refusal rate vs steering strength, one line per layer, one panel per request kind.

    ``value`` is a 0/1 value per example (``refused``: first token; ``gen_refusal``: generated
    reply). With ``gen_degenerate`` present and ``degenerate=True`` the degenerate-reply rate is
    drawn dotted in the layer's colour: steering that "removes refusal" by breaking the model shows
    up there. Baselines ``unsteered_<request>_refusal_rate`` are dashed lines.
    """
    r = as_result(result)
    check(r, ("steering_sweep",), ("request", "layer", "alpha", "example"), (value,))
    requests = tuple(q for q in requests if q in r.coords["request"])
    if not requests:
        raise PlotError(f"none of the requested request kinds are in the result (it has {list(r.coords['request'])}).")
    layers = r.coords["layer"] if layers is None else layers
    alphas = list(r.coords["alpha"])
    fig = make_subplots(
        rows=1,
        cols=len(requests),
        shared_yaxes=True,
        horizontal_spacing=0.06,
        subplot_titles=[f"{q} requests" for q in requests],
    )
    show_deg = degenerate and "gen_degenerate" in r.values
    for ci, q in enumerate(requests, start=1):
        for li, layer in enumerate(layers):
            cell = r.sel(request=q, layer=layer)  # dims (alpha, example)
            rate, low, high = wilson_rates(cell[value])
            c, group = colour(li), f"layer {layer}"
            add_band(fig, alphas, low, high, c, name=f"{q} layer {layer}", row=1, col=ci, legendgroup=group)
            fig.add_trace(
                curve(
                    alphas,
                    rate,
                    group,
                    c,
                    legendgroup=group,
                    showlegend=ci == 1,
                    meta={"request": q, "layer": layer, "value": value},
                    hovertemplate=f"layer {layer}<br>alpha %{{x}}<br>rate %{{y:.3f}}<extra>{q}</extra>",
                ),
                row=1,
                col=ci,
            )
            if show_deg:
                deg, _, _ = wilson_rates(cell["gen_degenerate"])
                meta = {"request": q, "layer": layer, "value": "gen_degenerate"}
                style = dict(legendgroup=group, showlegend=False, meta=meta)
                fig.add_trace(
                    line(alphas, deg, f"{group} degenerate", c, dash="dot", width=1.5, **style), row=1, col=ci
                )
        add_baseline(fig, r.baselines.get(f"unsteered_{q}_refusal_rate"), "unsteered", row=1, col=ci)
        fig.update_xaxes(title_text="steering strength alpha (x raw norm)", row=1, col=ci)
    fig.update_yaxes(title_text=REFUSAL_AXIS, range=[-0.02, 1.02], row=1, col=1)
    what = "first-token refusal" if value == "refused" else value
    fig.update_layout(
        template=TEMPLATE,
        legend_title_text="layer" + (" (dotted: degenerate)" if show_deg else ""),
        title=title or f"Persona steering: {what} vs alpha (95% Wilson bands)",
    )
    return fig


def fig_reintroduction(
    result: LabelledResult | str | os.PathLike,
    *,
    value: str = "refused",
    shade: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Refusal restored by adding the refusal direction back at each layer, with Wilson bands.

    The first and last third of the model's layers are shaded (early vs late: the paper's claim is
    that adding refusal back works late, not early); the safe baseline and the compliant state are
    dashed lines -- restoration runs from the second (0) to the first (1).
    """
    r = as_result(result)
    check(r, ("reintroduction",), ("layer", "example"), (value,))
    layers = list(r.coords["layer"])
    fig = go.Figure()
    if shade:
        L = n_layers(r, layers)
        third = L / 3
        # Layer l occupies [l - 0.5, l + 0.5]: "first third" = layers < L/3, "last third" = layers >= L - L/3.
        for x0, x1, label in ((-0.5, third - 0.5, "early third"), (L - third - 0.5, L - 0.5, "late third")):
            fig.add_vrect(
                x0=x0,
                x1=x1,
                fillcolor="#999999",
                opacity=0.12,
                line_width=0,
                layer="below",
                annotation_text=label,
                annotation_position="bottom left",
                annotation_font_size=11,
            )
    if value == "logodds":
        y = numpy(r.mean("example")["logodds"])
        fig.add_trace(go.Scatter(x=layers, y=y, mode="lines+markers", name="mean log-odds", line={"color": colour(4)}))
        add_baseline(fig, r.baselines.get("baseline_logodds"), "safe baseline")
        add_baseline(fig, r.baselines.get("compliant_logodds"), "compliant state", colour=colour(5))
        ytitle = "refusal log-odds (first response token)"
    else:
        rate, low, high = wilson_rates(r[value])
        add_band(fig, layers, low, high, colour(4), name="restored", legendgroup="restored")
        hover = "layer %{x}<br>rate %{y:.3f}<extra></extra>"
        name = "refusal with refusal added back"
        fig.add_trace(curve(layers, rate, name, colour(4), legendgroup="restored", hovertemplate=hover))
        add_baseline(fig, r.baselines.get("baseline_refusal_rate"), "safe baseline")
        add_baseline(fig, r.baselines.get("compliant_refusal_rate"), "compliant state", colour=colour(5))
        fig.update_yaxes(range=[-0.02, 1.05])
        ytitle = REFUSAL_AXIS
    fig.update_xaxes(title_text="layer where refusal is added back", **layer_ticks(layers))
    fig.update_yaxes(title_text=ytitle)
    mode = r.config.get("mode", "prompt")
    fig.update_layout(template=TEMPLATE, title=title or f"Re-introducing refusal under the compliant persona ({mode})")
    return fig


def _computed_windows(r: LabelledResult, direction: str, value: str) -> list[tuple[int, int]]:
    """The (start, end) cells that hold at least one finite example for ``direction``."""
    t = r.sel(direction=direction)[value].double()  # [start, end, example]
    done = np.isfinite(t.numpy()).any(-1)
    starts, ends = r.coords["start"], r.coords["end"]
    return [(starts[i], ends[j]) for i, j in zip(*np.nonzero(done))]


def _window_width(cells: list[tuple[int, int]], width: int | None) -> int:
    """``width`` (checked to have been run), else the most common width run (ties: the narrower)."""
    widths = collections.Counter(b - a + 1 for a, b in cells)
    if width is None:
        top = max(widths.values())
        width = min(w for w, c in widths.items() if c == top)  # ties: the narrower window is more local
    elif width not in widths:
        raise PlotError(f"no window of width {width} was run; widths run: {sorted(widths)}.")
    return width


def _window_heatmap(fig: go.Figure, z: np.ndarray, starts: list, ends: list, direction: str) -> None:
    """Left: mean refusal after projecting ``direction`` out over [start, end]; NaN cells stay blank."""
    hover = "start %{y}<br>end %{x}<br>refusal %{z:.3f}<extra></extra>"
    bar = {"x": 0.40, "len": 0.9}
    fig.add_trace(
        heatmap(ends, starts, z, direction, "refusal rate", hover, bar=bar, hoverongaps=False, **RATE_COLOURS),
        row=1,
        col=1,
    )
    fig.update_xaxes(title_text="last layer of the window (end)", **layer_ticks(ends), row=1, col=1)
    fig.update_yaxes(title_text="first layer of the window (start)", **layer_ticks(starts), row=1, col=1)


def _width_curves(
    fig: go.Figure,
    r: LabelledResult,
    mean: LabelledResult,
    cells: list[tuple[int, int]],
    direction: str,
    value: str,
    width: int,
) -> None:
    """Right: the windows of ``width`` by start layer, with the min-max band of the random directions."""
    xs = sorted(a for a, b in cells if b - a + 1 == width)
    at = lambda d: np.array([float(mean.sel(direction=d, start=a, end=a + width - 1)[value]) for a in xs])  # noqa: E731
    randoms = [d for d in r.coords["direction"] if str(d).startswith("random")]
    if randoms:
        rand = np.stack([at(d) for d in randoms])  # [random direction, start]
        add_band(
            fig,
            xs,
            np.nanmin(rand, axis=0),
            np.nanmax(rand, axis=0),
            colour(7),
            name="random directions",
            row=1,
            col=2,
            legendgroup="random",
        )
        name = f"random directions (min-max of {len(randoms)})"
        legend = line([None], [None], name, colour(7), width=8, opacity=0.3, legendgroup="random")
        fig.add_trace(legend, row=1, col=2)
    hover = "start %{x}<br>refusal %{y:.3f}<extra></extra>"
    fig.add_trace(curve(xs, at(direction), f"{direction} projected out", colour(5), hovertemplate=hover), row=1, col=2)
    add_baseline(fig, r.baselines.get("baseline_refusal_rate"), "safe baseline", row=1, col=2)
    add_baseline(fig, r.baselines.get("compliant_refusal_rate"), "compliant state", colour=colour(4), row=1, col=2)
    fig.update_xaxes(title_text=f"first layer of the window (width {width})", **layer_ticks(xs), row=1, col=2)
    fig.update_yaxes(title_text=REFUSAL_AXIS, range=[-0.02, 1.05], row=1, col=2)


def fig_window_projection(
    result: LabelledResult | str | os.PathLike,
    *,
    value: str = "refused",
    direction: str = "persona",
    width: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """Left: mean refusal after projecting ``direction`` out over [start, end] (NaN = not run, blank).
    Right: the windows of one width (default: the most common width run) by start layer, with the
    min-max band of the random control directions (``random<k>``) over the same windows.
    """
    r = as_result(result)
    check(r, ("window_projection",), ("direction", "start", "end", "example"), (value,))
    if direction not in r.coords["direction"]:
        raise PlotError(f"no direction {direction!r} in the result; it has {list(r.coords['direction'])}.")
    mean = r.mean("example")  # dims (direction, start, end); NaN where no example ran
    z = numpy(mean.sel(direction=direction)[value])
    starts, ends = list(r.coords["start"]), list(r.coords["end"])
    cells = _computed_windows(r, direction, value)
    if not cells:
        raise PlotError(f"no window was run for direction {direction!r} (every cell is NaN).")
    width = _window_width(cells, width)
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.5, 0.5],
        horizontal_spacing=0.22,
        subplot_titles=[f"{direction}: mean refusal after projection over [start, end]", f"windows of width {width}"],
    )
    _window_heatmap(fig, z, starts, ends, direction)
    _width_curves(fig, r, mean, cells, direction, value, width)
    fig.update_layout(
        template=TEMPLATE,
        legend={"x": 1.02, "y": 1},
        title=title or "Projecting the persona direction out over windows of layers",
    )
    return fig
