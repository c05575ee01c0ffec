"""Figures built from result objects only: plotly for every experiment, circuitsvis for tokens.

``figure_for(result)`` draws any persona_gate result (or a saved result folder) by its kind;
``fig_<kind>`` builders take options; :func:`token_view` colours prompt tokens by their
projections. Nothing here runs a model. HTML export is self-contained by default; PNGs are
rendered from the HTML report by headless Chromium (no kaleido dependency).

Example::

    from persona_gate.plots import figure_for, save_html
    fig = figure_for("runs/patching")                 # a LabelledResult or its saved folder
    save_html(fig, "report/patching.html")            # plotly.js inline: opens offline
"""

from __future__ import annotations

from ._common import PlotError
from .analysis_figures import (
    fig_extraction_sites,
    fig_geometry_cosine,
    fig_geometry_projections,
    fig_steering_selection,
    fig_trait_cosines,
    fig_trait_matrix,
)
from .compare_figures import fig_checkpoint_comparison
from .defence_figures import fig_guard_grid, fig_screening
from .export import save_html, save_png
from .figures import BUILDERS, figure_for
from .monitor_figures import fig_monitor_timeline
from .paper_figures import fig_reintroduction, fig_steering_sweep, fig_window_projection
from .patching_figures import fig_activation_patching, fig_attribution_patching, fig_patching
from .redteam_figures import fig_red_team
from .theme import DIVERGING, OKABE_ITO, SEQUENTIAL, TEMPLATE, layer_ticks
from .tokens import token_view

__all__ = [
    "BUILDERS",
    "DIVERGING",
    "OKABE_ITO",
    "PlotError",
    "SEQUENTIAL",
    "TEMPLATE",
    "fig_activation_patching",
    "fig_attribution_patching",
    "fig_checkpoint_comparison",
    "fig_extraction_sites",
    "fig_geometry_cosine",
    "fig_geometry_projections",
    "fig_guard_grid",
    "fig_monitor_timeline",
    "fig_patching",
    "fig_red_team",
    "fig_reintroduction",
    "fig_screening",
    "fig_steering_selection",
    "fig_steering_sweep",
    "fig_trait_cosines",
    "fig_trait_matrix",
    "fig_window_projection",
    "figure_for",
    "layer_ticks",
    "save_html",
    "save_png",
    "token_view",
]
