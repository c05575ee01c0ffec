"""Checkpoint comparison: how far did fine-tuning move the persona, the refusal direction and
refusal? ``checkpoints`` computes (runs models); ``summary`` reads a saved comparison (no model).
"""

from ..io import register_folder_kind

register_folder_kind(
    "comparison", "a checkpoint comparison (persona-gate compare)", lambda path, names: "comparison" in names, order=30
)
