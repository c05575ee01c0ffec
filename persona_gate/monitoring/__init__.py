"""The persona-drift monitor: per-turn persona and refusal readings of a conversation
(``readings``), thresholds calibrated on held-out chats (``calibration``), the monitor itself
(``monitor``) and what reads its results without a model (``summary``).
"""

from ..io import register_folder_kind

register_folder_kind(
    "monitor",
    "a monitor run (persona-gate monitor)",
    lambda path, names: "monitor" in names or "calibration" in names,
    order=40,
)
