"""Screening fine-tuning data: which examples push the persona toward compliance where the model refuses.

``data`` reads and writes JSONL chat datasets; ``screen`` scores them before any fine-tuning (runs
the model); ``summary`` reads a saved screening (no model); ``validation`` checks the score against
real fine-tunes of the organism (Spearman with the measured refusal drop, per-example AUROC).
"""

from ..io import register_folder_kind

register_folder_kind("screen", "a screening of fine-tuning data (persona-gate screen)")
