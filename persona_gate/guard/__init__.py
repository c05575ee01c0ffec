"""Guarding the gate: cap the persona projection over a layer window, evaluated against persona attacks.

``intervention`` holds :class:`~persona_gate.guard.intervention.Guard` (an intervention for
``apply`` and ``generate``) and its calibration; ``grid`` measures it over windows x percentiles
against a random-direction cap with over-refusal and KL (runs models); ``summary`` reads a saved
grid: the Pareto front, the recommended setting, the table (no model).
"""

from ..io import register_folder_kind

register_folder_kind("guard", "a guard evaluation (persona-gate guard)")
