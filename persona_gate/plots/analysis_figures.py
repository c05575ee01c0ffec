"""Figures of the analyses: geometry, trait directions, extraction sites and steering selection.

Cosines use the diverging scale on a fixed [-1, 1] range (0 = orthogonal is white), refusal
rates the sequential scale on [0, 1], so figures of different runs compare by eye.

Example::

    fig = fig_geometry_cosine(geo.cosine)             # cos(persona, refusal) per layer
    fig = fig_trait_matrix(traits.matrix, layer=3)    # trait x trait cosines at layer 3
    fig = fig_steering_selection(choice)              # layer x alpha, eligible and chosen cells marked
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..results import LabelledResult
from ._common import (
    RATE_COLOURS,
    PlotError,
    add_baseline,
    as_result,
    centred_colours,
    check,
    curve,
    heatmap,
    markers,
    numpy,
    point,
)
from .theme import DIVERGING, SEQUENTIAL, TEMPLATE, colour, layer_ticks

COS_AXIS = "cosine similarity"


def _middle(layers: Sequence[int]) -> int:
    return layers[len(layers) // 2]


def _pick_layer(r: LabelledResult, layer: int | None, default: int) -> int:
    layer = default if layer is None else layer
    if layer not in r.coords["layer"]:
        raise PlotError(f"layer {layer} is not in the result; its layers are {list(r.coords['layer'])}.")
    return layer


def _heatmap_panels(fig: go.Figure, layers: list, rows: list, panels: list[dict[str, Any]], ytitle: str) -> None:
    """One heatmap panel per entry of ``panels`` (its trace settings), side by side: layers along x,
    ``rows`` as categories along y."""
    for ci, panel in enumerate(panels, start=1):
        fig.add_trace(go.Heatmap(x=layers, y=rows, **panel), row=1, col=ci)
        fig.update_xaxes(title_text="layer", **layer_ticks(layers), row=1, col=ci)
    fig.update_yaxes(type="category", title_text=ytitle, row=1, col=1)


def _cosine_colours(title: str, **colorbar: Any) -> dict[str, Any]:
    """A colour axis for cosines: diverging over [-1, 1], white at 0."""
    return {
        "colorscale": DIVERGING,
        "cmin": -1.0,
        "cmax": 1.0,
        "cmid": 0.0,
        "colorbar": {"title": {"text": title}, **colorbar},
    }


def fig_geometry_cosine(result: LabelledResult | str | os.PathLike, *, title: str | None = None) -> go.Figure:
    """cos(persona, refusal) and cos(persona read at the last token, refusal) per layer."""
    r = as_result(result)
    check(r, ("geometry_cosine",), ("layer",), ("persona_refusal", "persona_last_refusal"))
    layers = list(r.coords["layer"])
    pos = r.config.get("persona_position", "persona position")
    fig = go.Figure()
    for i, (name, label) in enumerate(
        (("persona_refusal", f"cos(persona@{pos}, refusal)"), ("persona_last_refusal", "cos(persona@last, refusal)"))
    ):
        fig.add_trace(curve(layers, numpy(r[name]), label, colour(4 if i == 0 else 5), meta={"value": name}))
    fig.add_hline(y=0.0, line_color="#888888", line_width=1)
    fig.update_xaxes(title_text="layer", **layer_ticks(layers))
    fig.update_yaxes(title_text=COS_AXIS, range=[-1.05, 1.05])
    fig.update_layout(template=TEMPLATE, title=title or "Geometry: persona vs refusal direction per layer")
    return fig


def fig_trait_cosines(result: LabelledResult | str | os.PathLike, *, title: str | None = None) -> go.Figure:
    """Two trait x layer heatmaps: each trait direction's cosine with refusal and with the persona."""
    r = as_result(result)
    check(r, ("trait_cosines",), ("trait", "layer"), ("cos_refusal", "cos_persona"))
    t = r.sel(trait=list(r.coords["trait"]), layer=list(r.coords["layer"]))
    order = [t.dims.index("trait"), t.dims.index("layer")]
    traits, layers = list(r.coords["trait"]), list(r.coords["layer"])
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.05,
        subplot_titles=["cos(trait, refusal)", "cos(trait, persona)"],
    )
    panels = [
        {
            "z": numpy(t[name].permute(*order)),
            "name": name,
            "coloraxis": "coloraxis",
            "hovertemplate": "trait %{y}<br>layer %{x}<br>cos %{z:.3f}<extra>" + name + "</extra>",
        }
        for name in ("cos_refusal", "cos_persona")
    ]
    _heatmap_panels(fig, layers, traits, panels, "trait")
    fig.update_layout(
        template=TEMPLATE,
        coloraxis=_cosine_colours(COS_AXIS),
        title=title or "Relational trait directions vs refusal and persona",
    )
    return fig


def fig_trait_matrix(
    result: LabelledResult | str | os.PathLike, *, layer: int | None = None, title: str | None = None
) -> go.Figure:
    """Trait x trait cosine matrix at ``layer`` (default: the middle layer of the result)."""
    r = as_result(result)
    check(r, ("trait_matrix",), ("trait", "other", "layer"), ("cos",))
    layer = _pick_layer(r, layer, _middle(r.coords["layer"]))
    t = r.sel(layer=layer)
    z = numpy(t["cos"].permute(t.dims.index("trait"), t.dims.index("other")))
    x, y, hover = list(r.coords["other"]), list(r.coords["trait"]), "%{y} . %{x}<br>cos %{z:.3f}<extra></extra>"
    fig = go.Figure(heatmap(x, y, z, "cos", COS_AXIS, hover, texttemplate="%{z:.2f}", **centred_colours(1.0)))
    fig.update_xaxes(type="category", title_text="trait", tickangle=-30)
    fig.update_yaxes(type="category", title_text="trait", autorange="reversed")
    fig.update_layout(template=TEMPLATE, title=title or f"Cosines between trait directions at layer {layer}")
    return fig


def fig_geometry_projections(
    result: LabelledResult | str | os.PathLike, *, layer: int | None = None, title: str | None = None
) -> go.Figure:
    """Box plots of each group's projections onto the persona and refusal directions.

    With ``layer=None`` every layer is drawn and a slider shows one at a time (starting at the
    middle layer); with a layer, only that layer.
    """
    r = as_result(result)
    names = ("persona_projection", "refusal_projection")
    check(r, ("geometry_projections",), ("group", "example", "layer"), names)
    all_layers = list(r.coords["layer"])
    shown = all_layers if layer is None else [_pick_layer(r, layer, layer)]
    start = _middle(all_layers) if layer is None else layer
    groups = list(r.coords["group"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=["onto the persona direction", "onto the refusal direction"])
    for lay in shown:
        cell = r.sel(layer=lay)
        for ci, name in enumerate(names, start=1):
            t = cell[name].permute(cell.dims.index("group"), cell.dims.index("example"))
            for gi, g in enumerate(groups):
                y = numpy(t[gi])
                fig.add_trace(
                    go.Box(
                        y=y[np.isfinite(y)],
                        name=g,
                        legendgroup=g,
                        showlegend=ci == 1 and lay == start,
                        marker_color=colour(gi),
                        boxpoints="all",
                        jitter=0.4,
                        pointpos=0,
                        visible=lay == start,
                        meta={"layer": lay, "value": name, "group": g},
                    ),
                    row=1,
                    col=ci,
                )
        fig.update_yaxes(title_text="projection (residual-stream units)", row=1, col=1)
    per_layer = 2 * len(groups)
    if len(shown) > 1:
        steps = [
            {
                "method": "update",
                "label": str(lay),
                "args": [
                    {"visible": [i // per_layer == k for i in range(per_layer * len(shown))]},
                    {"title.text": title or f"Projections by group at layer {lay}"},
                ],
            }
            for k, lay in enumerate(shown)
        ]
        fig.update_layout(
            sliders=[
                {"active": shown.index(start), "steps": steps, "currentvalue": {"prefix": "layer "}, "pad": {"t": 40}}
            ]
        )
    fig.update_xaxes(title_text="group (persona/request)", tickangle=-20)
    fig.update_layout(template=TEMPLATE, boxmode="group", title=title or f"Projections by group at layer {start}")
    return fig


_SITE_EFFECTS = ("steering_refusal", "ablation_refusal", "ablation_harmless_refusal")
_EFFECT_LABELS = {
    "steering_refusal": "refusal after steering (safe/harmful; lower = steers)",
    "ablation_refusal": "refusal after ablation (compliant/harmful; higher = restores)",
    "ablation_harmless_refusal": "refusal after ablation (compliant/harmless; should stay low)",
    "cos_refusal": "cos(direction, refusal)",
}


def _site_grid(rate: LabelledResult, effect: str) -> np.ndarray:
    """One effect of an ``extraction_sites`` result as a [position, layer] array."""
    e = rate.sel(effect=effect)
    return numpy(e["rate"].permute(e.dims.index("position"), e.dims.index("layer")))


def _sites_heatmap(
    rate: LabelledResult, positions: list, layers: list, effects: Sequence[str], title: str | None
) -> go.Figure:
    """``style="heatmap"``: one position x layer heatmap per effect, cosines on their own scale."""
    fig = make_subplots(
        rows=1,
        cols=len(effects),
        shared_yaxes=True,
        horizontal_spacing=0.04,
        subplot_titles=[_EFFECT_LABELS.get(e, e) for e in effects],
    )
    panels = [
        {
            "z": _site_grid(rate, e),
            "name": e,
            "hoverongaps": False,
            "coloraxis": "coloraxis2" if e == "cos_refusal" else "coloraxis",
            "hovertemplate": "position %{y}<br>layer %{x}<br>%{z:.3f}<extra>" + e + "</extra>",
        }
        for e in effects
    ]
    _heatmap_panels(fig, layers, positions, panels, "extraction position")
    fig.update_layout(
        coloraxis={
            "colorscale": SEQUENTIAL,
            "cmin": 0.0,
            "cmax": 1.0,
            "colorbar": {"title": {"text": "refusal rate"}},
        },
        coloraxis2=_cosine_colours("cosine", x=1.12),
    )
    fig.update_layout(template=TEMPLATE, title=title or "Extraction sites: effect per position and layer")
    return fig


def _gate_layer(r: LabelledResult, rate: LabelledResult, layers: list) -> int:
    """The layer where ablation restores the most refusal over all positions (first on ties)."""
    if "ablation_refusal" not in r.coords["effect"]:
        raise PlotError("no ablation_refusal effect to choose a layer by; pass layer=.")
    ablation = _site_grid(rate, "ablation_refusal")
    best = np.nanmax(np.where(np.isfinite(ablation), ablation, -np.inf), axis=0)
    return layers[int(np.argmax(best))]  # first layer on ties: the earliest site that carries the gate


def _sites_bars(
    r: LabelledResult,
    rate: LabelledResult,
    positions: list,
    layers: list,
    layer: int,
    effects: Sequence[str],
    title: str | None,
) -> go.Figure:
    """``style="bars"``: grouped bars per position at ``layer``, the unsteered rates dashed."""
    li = layers.index(layer)
    fig = go.Figure()
    for i, e in enumerate(effects):
        fig.add_trace(
            go.Bar(
                x=positions,
                y=_site_grid(rate, e)[:, li],
                name=_EFFECT_LABELS.get(e, e),
                marker_color=colour(i),
                meta={"effect": e, "layer": layer},
                hovertemplate="%{x}<br>%{y:.3f}<extra>" + e + "</extra>",
            )
        )
    add_baseline(fig, r.baselines.get("safe/harmful"), "safe/harmful unsteered")
    add_baseline(fig, r.baselines.get("compliant/harmful"), "compliant/harmful", colour=colour(5))
    fig.update_xaxes(type="category", title_text="position the persona direction is read at")
    fig.update_yaxes(title_text="refusal rate (fraction; cos: cosine)")
    fig.update_layout(
        template=TEMPLATE,
        barmode="group",
        legend={"orientation": "h", "y": -0.25},
        title=title or f"Extraction sites at layer {layer}",
    )
    return fig


def fig_extraction_sites(
    result: LabelledResult | str | os.PathLike,
    *,
    layer: int | None = None,
    effects: Sequence[str] = _SITE_EFFECTS,
    style: str = "bars",
    title: str | None = None,
) -> go.Figure:
    """Per extraction position: the steering and ablation effects of the persona direction.

    ``style="bars"``: grouped bars per position at ``layer`` (default: the layer where ablation
    restores the most refusal, over all positions -- where the gate is read). ``style="heatmap"``:
    one position x layer heatmap per effect.
    """
    r = as_result(result)
    check(r, ("extraction_sites",), ("position", "layer", "effect"), ("rate",))
    unknown = [e for e in effects if e not in r.coords["effect"]]
    if unknown:
        raise PlotError(f"effects {unknown} are not in the result; it has {list(r.coords['effect'])}.")
    positions, layers = list(r.coords["position"]), list(r.coords["layer"])
    rate = r.sel(position=positions, layer=layers)
    if style == "heatmap":
        return _sites_heatmap(rate, positions, layers, effects, title)
    if style != "bars":
        raise PlotError(f"unknown style {style!r}; use 'bars' or 'heatmap'.")
    if layer is None:
        layer = _gate_layer(r, rate, layers)
    layer = _pick_layer(r, layer, layer)
    return _sites_bars(r, rate, positions, layers, layer, effects, title)


def fig_steering_selection(result: LabelledResult | str | os.PathLike, *, title: str | None = None) -> go.Figure:
    """Layer x alpha refusal rate with each cell's harmless KL written in it; eligible cells are
    marked with an open circle and the chosen cell (``baselines['chosen']``) with a star."""
    r = as_result(result)
    check(r, ("steering_selection",), ("layer", "alpha"), ("refusal_rate", "kl_harmless", "eligible"))
    layers, alphas = list(r.coords["layer"]), list(r.coords["alpha"])
    t = r.sel(layer=layers, alpha=alphas)
    order = (t.dims.index("layer"), t.dims.index("alpha"))
    rate, kl = numpy(t["refusal_rate"].permute(*order)), numpy(t["kl_harmless"].permute(*order))
    eligible = t["eligible"].permute(*order).bool().numpy()
    text = np.vectorize(lambda k: f"KL {k:.2g}")(kl)
    hover = "layer %{y}<br>alpha %{x}<br>refusal %{z:.3f}<br>KL %{customdata:.4f}<extra></extra>"
    text_style = dict(text=text, texttemplate="%{text}", customdata=kl)
    fig = go.Figure(heatmap(alphas, layers, rate, "refusal_rate", "refusal rate", hover, **text_style, **RATE_COLOURS))
    li, ai = np.nonzero(eligible)
    ring = {"symbol": "circle-open", "size": 22, "line": {"width": 2}, "color": "white"}
    fig.add_trace(markers([alphas[j] for j in ai], [layers[i] for i in li], "eligible", ring, hoverinfo="skip"))
    chosen = r.baselines.get("chosen")
    if isinstance(chosen, dict) and "layer" in chosen and "alpha" in chosen:
        star = {"symbol": "star", "size": 20, "color": colour(5), "line": {"width": 1.5, "color": "black"}}
        hover = "chosen: layer %{y}, alpha %{x}<extra></extra>"
        fig.add_trace(point(chosen["alpha"], chosen["layer"], "chosen", star, hovertemplate=hover))
    kl_max = r.config.get("kl_max")
    note = f" (eligible: KL <= {kl_max}, not late, refusal drops)" if kl_max is not None else ""
    fig.update_xaxes(title_text="steering strength alpha (x raw norm)", type="category" if len(alphas) < 2 else None)
    fig.update_yaxes(title_text="layer", **layer_ticks(layers))
    fig.update_layout(
        template=TEMPLATE, legend={"orientation": "h", "y": -0.2}, title=title or f"Steering selection{note}"
    )
    return fig
