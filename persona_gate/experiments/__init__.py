"""The paper's experiments and the analyses around them, each returning a labelled result.

Example::

    from persona_gate.experiments import steering_sweep, reintroduction, window_projection
    sweep = steering_sweep(model, pr.persona)
    sweep.to_dataframe()
"""

from ..scoring.refusal import RefusalScorer, eval_groups
from .analysis import Geometry, TraitResult, extraction_sites, geometry, select_steering, trait_directions
from .paper import reintroduction, restoration, steering_sweep, window_projection

__all__ = [
    "Geometry",
    "RefusalScorer",
    "TraitResult",
    "eval_groups",
    "extraction_sites",
    "geometry",
    "reintroduction",
    "restoration",
    "select_steering",
    "steering_sweep",
    "trait_directions",
    "window_projection",
]
