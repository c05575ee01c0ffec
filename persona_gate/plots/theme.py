"""One look for every persona_gate figure: a plotly template, colour-blind-safe colours, layer ticks.

Qualitative colours are the Okabe-Ito palette (distinguishable under the common colour-vision
deficiencies); rates in [0, 1] use a sequential scale (Viridis: perceptually uniform, readable in
grey), signed quantities -- restoration, cosines -- a diverging scale centred at 0 (RdBu), so
"no effect" is white whatever the data's range. Importing this module changes no global plotly
state: figures name :data:`TEMPLATE` explicitly instead of replacing ``plotly.io.templates.default``.

Example::

    fig = go.Figure(layout={"template": TEMPLATE})
    fig.update_xaxes(**layer_ticks(range(48)))        # at most ~16 labels on a 48-layer axis
    fig.add_scatter(y=[0, 1], line_color=colour(2))
"""

from __future__ import annotations

from collections.abc import Iterable

import plotly.graph_objects as go

# Okabe & Ito (2008), "Color Universal Design"; black moved last so lines start coloured.
OKABE_ITO: tuple[str, ...] = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#000000",  # black
)
SEQUENTIAL = "Viridis"
SEQUENTIAL_ALT = "Cividis"
# RdBu runs red (low) -> white -> blue (high): with zmid=0, restoration toward the source is blue.
DIVERGING = "RdBu"
BASELINE_DASH = "dash"
BAND_OPACITY = 0.2
MAX_TICK_LABELS = 16

_AXIS = {  # both axes alike
    "showgrid": True,
    "gridcolor": "#e5e5e5",
    "zeroline": False,
    "linecolor": "#444444",
    "ticks": "outside",
    "title": {"font": {"size": 14}},
    "tickfont": {"size": 12},
}

TEMPLATE = go.layout.Template(
    layout=go.Layout(
        paper_bgcolor="white",
        plot_bgcolor="white",
        font={"family": "Arial, Helvetica, sans-serif", "size": 14, "color": "#222222"},
        title={"font": {"size": 18}, "x": 0.02, "xanchor": "left"},
        colorway=list(OKABE_ITO),
        legend={"font": {"size": 12}, "bgcolor": "rgba(255,255,255,0.8)"},
        xaxis=_AXIS,
        yaxis=_AXIS,
        coloraxis={"colorbar": {"tickfont": {"size": 12}}},
        margin={"l": 70, "r": 30, "t": 70, "b": 60},
        hoverlabel={"font": {"size": 12}},
    )
)


def colour(i: int) -> str:
    """The ``i``-th qualitative colour, cycling (layer 9 of a 32-layer sweep reuses colour 1)."""
    return OKABE_ITO[i % len(OKABE_ITO)]


def rgba(hex_colour: str, alpha: float = BAND_OPACITY) -> str:
    """``#RRGGBB`` as an ``rgba(...)`` string: confidence bands are the line's colour, translucent."""
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def layer_ticks(layers: Iterable[int], max_labels: int = MAX_TICK_LABELS) -> dict:
    """Axis settings that label every layer up to ``max_labels`` layers and every k-th beyond.

    Deep models (32+ layers) otherwise get overlapping labels; the first and last layer keep
    theirs so the axis' extent stays readable. Pass the result to ``update_xaxes``/``update_yaxes``.
    """
    layers = list(layers)
    if max_labels < 2:
        raise ValueError(f"max_labels must be >= 2 (first and last layer), got {max_labels}.")
    step = max(1, -(-len(layers) // max_labels))  # ceil division
    shown = layers[::step]
    if layers and shown[-1] != layers[-1]:
        shown = shown[:-1] + [layers[-1]] if len(shown) >= max_labels else shown + [layers[-1]]
    return {"tickmode": "array", "tickvals": shown, "ticktext": [str(x) for x in shown]}
