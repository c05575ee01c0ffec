"""One figure per result kind, and :func:`figure_for` that picks it from ``result.kind``.

Every builder takes a :class:`~persona_gate.results.LabelledResult` (or the folder it was saved
to) and options, and returns a ``plotly.graph_objects.Figure``; none of them runs a model, so a
figure can be redrawn from saved results alone.

Example::

    fig = figure_for(LabelledResult.load("runs/sweep"))    # or figure_for("runs/sweep")
    fig = figure_for(patching_result, exclude=("[all]",))  # options go to the kind's builder
    save_html(fig, "sweep.html")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import plotly.graph_objects as go

from ..results import LabelledResult
from . import (
    analysis_figures,
    compare_figures,
    defence_figures,
    monitor_figures,
    paper_figures,
    patching_figures,
    redteam_figures,
)
from ._common import PlotError, as_result

BUILDERS: dict[str, Callable[..., go.Figure]] = {
    "steering_sweep": paper_figures.fig_steering_sweep,
    "reintroduction": paper_figures.fig_reintroduction,
    "window_projection": paper_figures.fig_window_projection,
    "activation_patching": patching_figures.fig_activation_patching,
    "attribution_patching": patching_figures.fig_attribution_patching,
    "extraction_sites": analysis_figures.fig_extraction_sites,
    "geometry_cosine": analysis_figures.fig_geometry_cosine,
    "geometry_projections": analysis_figures.fig_geometry_projections,
    "trait_cosines": analysis_figures.fig_trait_cosines,
    "trait_matrix": analysis_figures.fig_trait_matrix,
    "steering_selection": analysis_figures.fig_steering_selection,
    "checkpoint_comparison": compare_figures.fig_checkpoint_comparison,
    "red_team": redteam_figures.fig_red_team,
    "persona_monitor": monitor_figures.fig_monitor_timeline,
    "screening": defence_figures.fig_screening,
    "guard_grid": defence_figures.fig_guard_grid,
}


def figure_for(result: LabelledResult | str | os.PathLike, **opts: Any) -> go.Figure:
    """The figure of ``result``'s kind; ``opts`` go to that kind's ``fig_<kind>`` builder."""
    r = as_result(result)
    builder = BUILDERS.get(r.kind)
    if builder is None:
        raise PlotError(f"no figure for result kind {r.kind!r}; known kinds: {sorted(BUILDERS)}.")
    return builder(r, **opts)


__all__ = ["BUILDERS", "figure_for"]
