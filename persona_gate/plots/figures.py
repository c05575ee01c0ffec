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
from ._common import PlotError, as_result
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
from .monitor_figures import fig_monitor_timeline
from .paper_figures import fig_reintroduction, fig_steering_sweep, fig_window_projection
from .patching_figures import fig_activation_patching, fig_attribution_patching
from .redteam_figures import fig_red_team

BUILDERS: dict[str, Callable[..., go.Figure]] = {
    "steering_sweep": fig_steering_sweep,
    "reintroduction": fig_reintroduction,
    "window_projection": fig_window_projection,
    "activation_patching": fig_activation_patching,
    "attribution_patching": fig_attribution_patching,
    "extraction_sites": fig_extraction_sites,
    "geometry_cosine": fig_geometry_cosine,
    "geometry_projections": fig_geometry_projections,
    "trait_cosines": fig_trait_cosines,
    "trait_matrix": fig_trait_matrix,
    "steering_selection": fig_steering_selection,
    "checkpoint_comparison": fig_checkpoint_comparison,
    "red_team": fig_red_team,
    "persona_monitor": fig_monitor_timeline,
    "screening": fig_screening,
    "guard_grid": fig_guard_grid,
}


def figure_for(result: LabelledResult | str | os.PathLike, **opts: Any) -> go.Figure:
    """The figure of ``result``'s kind; ``opts`` go to that kind's ``fig_<kind>`` builder."""
    r = as_result(result)
    builder = BUILDERS.get(r.kind)
    if builder is None:
        raise PlotError(f"no figure for result kind {r.kind!r}; known kinds: {sorted(BUILDERS)}.")
    return builder(r, **opts)


__all__ = ["BUILDERS", "figure_for"]
