"""Activation / attribution patching as a layer x position heatmap of mean restoration.

``restoration = (m_patched - m_target) / (m_source - m_target)``: 0 = the unpatched target
(compliant), 1 = the source (safe, refuses). The colour scale is diverging and centred at 0, so
patches that push the wrong way are red and those that restore refusal blue; the range covers at
least [-1, 1] so that full restoration is the same blue in every figure. Hover text gives the
layer, the position's token text, the mean over examples and its 95% interval (normal, as
:func:`persona_gate.experiments.patching.gate_layers`).

Example::

    fig = fig_patching(exact)                         # activation_patching result
    fig = fig_patching(approx, exclude=("[all]",))    # attribution_patching, without the [all] slot
    fig.data[0].z                                     # == exact.mean("example")["restoration"]
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ..results import LabelledResult
from ._common import as_result, centred_colours, check, heatmap, mean_ci, symmetric_range
from .theme import TEMPLATE, layer_ticks

_TITLES = {
    "activation_patching": "Activation patching",
    "attribution_patching": "Attribution patching (first-order estimate)",
}


def fig_patching(
    result: LabelledResult | str | os.PathLike,
    *,
    value: str = "restoration",
    exclude: Sequence[str] = (),
    title: str | None = None,
) -> go.Figure:
    """Mean ``value`` over examples per (layer, position); positions labelled by their token text."""
    r = as_result(result)
    check(r, tuple(_TITLES), ("layer", "position", "example"), (value,))
    positions = [p for p in r.coords["position"] if p not in set(exclude)]
    sub = r.sel(position=positions).sel(layer=list(r.coords["layer"]))
    t = sub[value].permute(*(sub.dims.index(d) for d in ("layer", "position", "example")))
    mean, low, high, n = mean_ci(t)
    layers = list(r.coords["layer"])
    custom = np.stack([low, high, n.astype(float)], axis=-1)  # [layer, position, 3]
    bound = symmetric_range(mean)
    kind = r.config.get("kind", "resid_pre")
    mode = r.config.get("mode")
    hover = (
        "layer %{y}<br>position %{x}<br>mean %{z:.3f}"
        "<br>95% CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}] (n = %{customdata[2]})<extra></extra>"
    )
    bar = "restoration<br>(0 = target,<br>1 = source)"
    colours = centred_colours(bound)
    fig = go.Figure(
        heatmap(positions, layers, mean, value, bar, hover, customdata=custom, hoverongaps=False, **colours)
    )
    # Token texts such as "0" or "12" would otherwise turn the axis numeric and merge slots.
    fig.update_xaxes(
        type="category",
        title_text="position (token text; [system]/[user] = whole block)",
        tickangle=-45,
        categoryorder="array",
        categoryarray=positions,
    )
    fig.update_yaxes(title_text=f"layer ({kind})", **layer_ticks(layers))
    extra = f", {mode}" if mode else ""
    longest = max((len(p) for p in positions), default=8)
    fig.update_layout(
        template=TEMPLATE,
        title=title or f"{_TITLES[r.kind]}: restoration of refusal ({kind}{extra})",
        margin={"b": 60 + 6 * min(longest, 24)},
        height=420 + 6 * min(longest, 24),
    )
    return fig


fig_activation_patching = fig_patching
fig_attribution_patching = fig_patching
