"""The checkpoint-comparison figure: what fine-tuning did to the persona, refusal and behaviour.

Four panels from one ``checkpoint_comparison`` result (never a model): per layer, the cosine of
B's persona and refusal directions with A's; both checkpoints' raw direction norms; where B puts
safe- and compliant-persona harmful requests along A's persona direction (0 = A's safe persona,
1 = A's compliant one, dotted reference lines); and the refusal rate of each persona x request
group for A and B with Wilson 95% intervals (:func:`persona_gate.compare.summary.refusal_rates`; a result
without that refusal baseline raises a :class:`PlotError`). Every trace carries ``meta={"value": name,
"checkpoint": ...}`` so tests and readers can match it to the result.

Example::

    fig = fig_checkpoint_comparison(compare_checkpoints("organism", "runs/compliant"))
    fig = figure_for("runs/compare/comparison")       # a saved result folder
    save_html(fig, "compare.html")
"""

from __future__ import annotations

import os

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..compare.summary import refusal_rates
from ..results import LabelledResult
from ..scoring.stats import RateSummary
from ._common import PlotError, as_result, check, curve, numpy
from .theme import TEMPLATE, colour, layer_ticks

_COS = (
    ("cos_persona", "persona (system mean)", 4),
    ("cos_persona_last", "persona (last token)", 1),
    ("cos_refusal", "refusal", 5),
)
_NORMS = (("persona_norm", "|persona|", 4), ("refusal_norm", "|refusal|", 5))
_SHIFTS = (
    ("shift", "safe persona, system mean", 0, "solid"),
    ("compliant_shift", "compliant persona, system mean", 0, "dot"),
    ("shift_last", "safe persona, last token", 2, "solid"),
    ("compliant_shift_last", "compliant persona, last token", 2, "dot"),
)
_DASH = {"a": "dash", "b": "solid"}


def _refusal_rates(r: LabelledResult) -> dict[str, dict[str, RateSummary]]:
    """The refusal panel's rates; a :class:`PlotError` naming the fix when the baseline is missing or empty."""
    fix = (
        "the refusal panel needs baselines['refusal'][checkpoint][group] = {'k': ..., 'n': >= 1} for checkpoints "
        "'a' and 'b' over the same groups, as compare_checkpoints writes it; recompute the comparison with "
        "compare_checkpoints (or pass the folder it was saved to), not an edited or hand-built result."
    )
    try:
        rates = refusal_rates(r)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # no baseline, k or n missing, n < 1, k > n
        raise PlotError(
            f"the refusal baseline of this checkpoint_comparison result cannot be read ({type(e).__name__}: {e}); {fix}"
        ) from None
    groups = {ck: list(rates.get(ck, {})) for ck in ("a", "b")}
    if not groups["a"] or groups["a"] != groups["b"]:
        raise PlotError(f"the refusal baseline of this checkpoint_comparison result holds groups {groups}; {fix}")
    return rates


def fig_checkpoint_comparison(result: LabelledResult | str | os.PathLike, *, title: str | None = None) -> go.Figure:
    """Cosines, norms, persona-direction shift and refusal rates of checkpoint B against A."""
    r = as_result(result)
    values = tuple(v for group in (_COS, _NORMS, _SHIFTS) for v, *_ in group)
    check(r, ("checkpoint_comparison",), ("checkpoint", "layer"), values)
    rates = _refusal_rates(r)  # checked before any drawing
    layers = list(r.coords["layer"])
    a, b = r.sel(checkpoint="a"), r.sel(checkpoint="b")
    name_a, name_b = r.config.get("model_a", "A"), r.config.get("model_b", "B")
    fig = make_subplots(
        rows=2,
        cols=2,
        vertical_spacing=0.16,
        horizontal_spacing=0.09,
        subplot_titles=[
            "cos(B's direction, A's direction)",
            "raw direction norm (A dashed, B solid)",
            "B's harmful requests along A's persona direction",
            "refusal rate (greedy first token, 95% Wilson)",
        ],
    )

    # (row, col, legend group, value, checkpoint, trace name, colour, dash), in drawing order
    curves = [(1, 1, "cos", value, "b", f"cos {label}", c, None) for value, label, c in _COS]
    curves += [(1, 2, "norm", v, ck, f"{label} {ck.upper()}", c, _DASH[ck]) for v, label, c in _NORMS for ck in "ab"]
    curves += [(2, 1, "shift", value, "b", f"B: {label}", c, dash) for value, label, c, dash in _SHIFTS]
    for row, col, group, value, ck, name, c, dash in curves:
        y = numpy((a if ck == "a" else b)[value])
        meta = {"value": value, "checkpoint": ck}
        fig.add_trace(curve(layers, y, name, colour(c), dash=dash, meta=meta, legendgroup=group), row=row, col=col)
    for y, text in ((0.0, "A's safe persona"), (1.0, "A's compliant persona")):
        fig.add_hline(
            y=y,
            line_dash="dot",
            line_color="#666666",
            line_width=1,
            annotation_text=text,
            annotation_position="top left",
            annotation_font_size=11,
            row=2,
            col=1,
        )

    groups = list(rates["a"])
    for ck in ("a", "b"):
        cells = [rates[ck][g] for g in groups]
        k = np.array([c.k for c in cells], dtype=float)
        n = np.array([c.n for c in cells], dtype=float)
        rate = np.array([c.rate for c in cells])
        low, high = np.array([c.low for c in cells]), np.array([c.high for c in cells])
        fig.add_trace(
            go.Bar(
                x=groups,
                y=rate,
                name=f"{ck.upper()}: {name_a if ck == 'a' else name_b}",
                marker_color=colour(7 if ck == "a" else 5),
                meta={"value": "refusal_rate", "checkpoint": ck},
                error_y={"type": "data", "symmetric": False, "array": high - rate, "arrayminus": rate - low},
                customdata=np.stack([k, n], axis=-1),
                legendgroup="refusal",
                hovertemplate="%{x}<br>refusal %{y:.2f} (%{customdata[0]:.0f}/%{customdata[1]:.0f})"
                f"<extra>{ck.upper()}</extra>",
            ),
            row=2,
            col=2,
        )

    for row, col in ((1, 1), (1, 2), (2, 1)):
        fig.update_xaxes(title_text="layer", **layer_ticks(layers), row=row, col=col)
    fig.update_yaxes(title_text="cosine", row=1, col=1)
    fig.update_yaxes(title_text="raw norm", rangemode="tozero", row=1, col=2)
    fig.update_yaxes(title_text="position (A's persona units)", row=2, col=1)
    fig.update_yaxes(title_text="refusal rate", range=[0, 1.05], row=2, col=2)
    fig.update_layout(
        template=TEMPLATE,
        barmode="group",
        height=820,
        title=title or f"Checkpoint comparison: B = {name_b} against A = {name_a}",
    )
    return fig


__all__ = ["fig_checkpoint_comparison"]
