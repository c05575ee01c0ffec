"""The persona-drift monitor: per-turn persona and refusal readings of a conversation
(``readings``), thresholds calibrated on held-out chats (``calibration``), the monitor itself
(``monitor``) and what reads its results without a model (``summary``).
"""
