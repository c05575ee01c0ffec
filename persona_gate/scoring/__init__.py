"""Scoring refusal: first-token log-odds (``metrics``), reply labels (``labels``), judges
(``judges``), the scorer every experiment shares (``refusal``) and the statistics every caller
uses (``stats``: Wilson intervals, mean intervals, AUROC).
"""
