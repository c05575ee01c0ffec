"""Shared pieces of the figure builders: loading, kind checks, Wilson bands, baselines, curves.

Rates are computed from the per-example values (``k`` refusals of ``n`` finite examples) rather
than from a stored mean, so every band is a Wilson 95% interval of the same ``k`` and ``n`` that
gave the point -- a NaN cell (not run) has no point and no band.

Example::

    r = as_result("runs/sweep")                     # a LabelledResult or a saved result folder
    rate, low, high = wilson_rates(r["refused"])    # over the last dim (examples)
    add_band(fig, x, low, high, colour(0), name="layer 2")
    fig.add_trace(curve(x, rate, "layer 2", colour(0)))  # lines and markers, 2 px
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from torch import Tensor

from ..errors import PersonaGateError
from ..results import LabelledResult
from ..scoring.stats import mean_interval, wilson_interval
from .theme import BASELINE_DASH, DIVERGING, SEQUENTIAL, rgba

# 1.96, not the exact quantile: gate_layers uses 1.96, and the hover text must print its numbers.


class PlotError(PersonaGateError, ValueError):
    """A result that a figure cannot be drawn from (wrong kind, missing dim or value)."""


def as_result(result: LabelledResult | str | os.PathLike) -> LabelledResult:
    """A result object as is; a path is loaded as a saved result folder (``LabelledResult.save``)."""
    if isinstance(result, LabelledResult):
        return result
    if not isinstance(result, (str, os.PathLike)):
        raise PlotError(
            f"figures draw a persona_gate result or its saved folder, not a {type(result).__name__}; "
            "pass what an experiment returned (or the path it was saved to)."
        )
    return LabelledResult.load(result)


def check(result: LabelledResult, kinds: Sequence[str], dims: Sequence[str], values: Sequence[str] = ()) -> None:
    """Raise a :class:`PlotError` that names the fix when ``result`` is not what the figure draws."""
    if result.kind not in kinds:
        raise PlotError(
            f"this figure draws {list(kinds)} results, not {result.kind!r}; use figure_for(result) to pick the right one."
        )
    missing = [d for d in dims if d not in result.dims]
    if missing:
        raise PlotError(
            f"the {result.kind} result lacks dims {missing} (it has {result.dims}); "
            "pass the result as the experiment returned it, not a sel()/mean() of it."
        )
    absent = [v for v in values if v not in result.values]
    if absent:
        raise PlotError(f"the {result.kind} result lacks values {absent} (it has {list(result.values)}).")


def wilson_rates(t: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rate, Wilson 95% low and high over the last axis; NaN examples are not counted.

    ``t`` holds 0/1 (bool, or float with NaN for examples not run). Cells with no finite example
    are NaN in all three arrays.
    """
    x = t.detach().cpu().double()
    finite = torch.isfinite(x)
    k = torch.where(finite, x, torch.zeros_like(x)).sum(-1)
    n = finite.sum(-1)
    rate, low, high = (np.full(tuple(k.shape), np.nan) for _ in range(3))
    for idx in np.ndindex(*k.shape):
        ni = int(n[idx])
        if ni == 0:
            continue
        ki = int(round(float(k[idx])))
        rate[idx] = ki / ni
        low[idx], high[idx] = wilson_interval(ki, ni)
    return rate, low, high


def mean_ci(t: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """NaN-aware mean over the last axis with its normal 95% interval (:func:`~persona_gate.scoring.stats.mean_interval`).

    The same estimate as :func:`persona_gate.experiments.patching.gate_layers`, so hover text and the gate
    table agree. Returns mean, low, high and the count of finite examples as arrays.
    """
    mean, low, high, n = mean_interval(t)
    return mean.numpy(), low.numpy(), high.numpy(), n.numpy()


def add_band(
    fig: go.Figure,
    x: Sequence[Any],
    low: np.ndarray,
    high: np.ndarray,
    colour: str,
    *,
    name: str,
    row: int | None = None,
    col: int | None = None,
    legendgroup: str | None = None,
) -> None:
    """A translucent band between ``low`` and ``high``: two traces, the upper filled to the lower.

    The traces are named ``"<name> low"`` and ``"<name> high"`` (hidden from the legend) so tests
    and readers can find the band edges in ``fig.data``.
    """
    where = {"row": row, "col": col} if row is not None else {}
    common = {
        "mode": "lines",
        "line": {"width": 0, "color": colour},
        "showlegend": False,
        "hoverinfo": "skip",
        "legendgroup": legendgroup,
    }
    fig.add_trace(go.Scatter(x=list(x), y=np.asarray(low, dtype=float), name=f"{name} low", **common), **where)
    fig.add_trace(
        go.Scatter(
            x=list(x),
            y=np.asarray(high, dtype=float),
            name=f"{name} high",
            fill="tonexty",
            fillcolor=rgba(colour),
            **common,
        ),
        **where,
    )


def add_baseline(
    fig: go.Figure, y: Any, label: str, *, colour: str = "#444444", row: int | None = None, col: int | None = None
) -> None:
    """A dashed horizontal reference line with its label; skipped when the baseline is absent/NaN."""
    if not isinstance(y, (int, float)) or isinstance(y, bool) or not math.isfinite(y):
        return
    where = {"row": row, "col": col} if row is not None else {}
    fig.add_hline(
        y=float(y),
        line_dash=BASELINE_DASH,
        line_color=colour,
        line_width=1.5,
        annotation_text=label,
        annotation_position="top right",
        annotation_font_size=11,
        **where,
    )


def curve(x: Any, y: Any, name: str, colour: str, *, dash: str | None = None, **style: Any) -> go.Scatter:
    """A curve the figures' way: lines and markers, 2 px wide in ``colour`` (``dash``: dashed or dotted);
    ``style``: the trace's other settings (``meta``, ``legendgroup``, ``hovertemplate``, ...)."""
    line = {"color": colour, "width": 2} if dash is None else {"color": colour, "width": 2, "dash": dash}
    return go.Scatter(x=x, y=y, mode="lines+markers", name=name, line=line, **style)


def line(
    x: Any, y: Any, name: str, colour: str, *, dash: str | None = None, width: int | float | None = None, **style: Any
) -> go.Scatter:
    """A line without markers in ``colour`` (``dash``, ``width``: where it is not plotly's solid 2 px);
    ``style``: the trace's other settings."""
    spec: dict[str, Any] = {"color": colour}
    if dash is not None:
        spec["dash"] = dash
    if width is not None:
        spec["width"] = width
    return go.Scatter(x=x, y=y, mode="lines", name=name, line=spec, **style)


def markers(x: Any, y: Any, name: str, marker: dict[str, Any], **style: Any) -> go.Scatter:
    """Marked points without lines; ``marker``: their symbol, size and colour."""
    return go.Scatter(x=x, y=y, mode="markers", name=name, marker=marker, **style)


def point(x: Any, y: Any, name: str, marker: dict[str, Any], **style: Any) -> go.Scatter:
    """One marked point (the chosen or recommended setting, a reference)."""
    return markers([x], [y], name, marker, **style)


# A rate's colours: sequential from 0 to 1, the same in every figure.
RATE_COLOURS: dict[str, Any] = {"colorscale": SEQUENTIAL, "zmin": 0.0, "zmax": 1.0}


def centred_colours(bound: float) -> dict[str, Any]:
    """Diverging colours over ``[-bound, bound]``, white at 0."""
    return {"colorscale": DIVERGING, "zmid": 0.0, "zmin": -bound, "zmax": bound}


def heatmap(
    x: Any, y: Any, z: Any, name: str, colourbar: str, hover: str, *, bar: dict | None = None, **style: Any
) -> go.Heatmap:
    """A heatmap the figures' way: ``colourbar`` titles its colour bar (``bar``: the bar's other
    settings), ``hover`` is its hover template; ``style``: colours (:data:`RATE_COLOURS`,
    :func:`centred_colours`), text and the trace's other settings."""
    return go.Heatmap(
        x=x, y=y, z=z, name=name, colorbar={"title": {"text": colourbar}, **(bar or {})}, hovertemplate=hover, **style
    )


def numpy(t: Tensor) -> np.ndarray:
    """float64 numpy copy (NaN kept), what plotly serialises."""
    return t.detach().cpu().double().numpy()


def symmetric_range(z: np.ndarray, at_least: float = 1.0) -> float:
    """Half-width of a colour range centred at 0 that covers ``z`` and at least ``[-1, 1]``."""
    finite = np.abs(z[np.isfinite(z)])
    return float(max(at_least, finite.max() if finite.size else 0.0))


def n_layers(result: LabelledResult, layers: Sequence[int]) -> int:
    """The model's layer count: from provenance when recorded, else one past the largest layer."""
    model = result.provenance.get("model") if isinstance(result.provenance, dict) else None
    if isinstance(model, dict) and isinstance(model.get("n_layers"), int):
        return int(model["n_layers"])
    return int(max(layers)) + 1
