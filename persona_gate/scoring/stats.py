"""Statistics every result in persona_gate reports: one module, one set of formulas.

* :func:`wilson_interval` / :class:`RateSummary`: a rate ``k / n`` with its Wilson score interval;
* :func:`mean_interval`: a NaN-aware mean over the last axis with its normal interval
  ``mean +- z * sd / sqrt(n)``, ``z`` the exact normal quantile (:data:`Z95` for 95%);
* :func:`auroc`: the exact area under the ROC curve (Mann-Whitney U from midranks).

Example::

    RateSummary.of(3, 40)                   # 7.5% [2.6%, 19.9%] (3/40)
    mean, low, high, n = mean_interval(torch.tensor([[0.2, 0.4, 0.9]]))
    auroc([0.1, 0.8, 0.5], [False, True, True])      # 1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor

from ..errors import EmptyGroupError, NonFiniteError


def normal_quantile(level: float = 0.95) -> float:
    """The two-sided standard-normal quantile of a ``level`` interval (1.959963984540054 for 95%)."""
    if not 0 < level < 1:
        raise ValueError(f"an interval level lies strictly between 0 and 1, got {level}.")
    return NormalDist().inv_cdf(0.5 + level / 2)


Z95: float = normal_quantile(0.95)


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials (default: 95%)."""
    if n <= 0:
        raise ValueError(f"a rate needs n >= 1 trials, got n={n}; drop empty groups before summarising.")
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in 0..n, got k={k}, n={n}.")
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a positive finite quantile (1.96 for 95%), got {z}.")
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At k == 0 or k == n the bound is exactly 0 or 1; clamp away float noise.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class RateSummary:
    """``k`` of ``n`` with the point rate and its Wilson interval ``[low, high]``."""

    rate: float
    low: float
    high: float
    k: int
    n: int

    @classmethod
    def of(cls, k: int, n: int, z: float = Z95) -> RateSummary:
        low, high = wilson_interval(k, n, z)
        return cls(rate=k / n, low=low, high=high, k=k, n=n)

    def __str__(self) -> str:
        return f"{self.rate:.1%} [{self.low:.1%}, {self.high:.1%}] ({self.k}/{self.n})"


def mean_interval(t: Tensor, z: float = Z95) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NaN-aware mean over the last axis with a normal interval ``mean +- z sd / sqrt(n)`` (float64).

    Returns mean, low, high and the count of finite entries; with n < 2 the interval is NaN (one
    value has no spread).
    """
    x = t.detach().cpu().double()
    n = torch.isfinite(x).sum(-1)
    mean = torch.nanmean(x, dim=-1)
    var = torch.nansum((x - mean[..., None]) ** 2, dim=-1) / (n - 1).clamp_min(1)
    half = z * var.sqrt() / n.clamp_min(1).double().sqrt()
    half = torch.where(n > 1, half, torch.full_like(half, float("nan")))
    return mean, mean - half, mean + half, n


def auroc(scores: Any, positive: Any) -> float:
    """Exact area under the ROC curve of ``scores`` for the ``positive`` class, ties counted one half.

    Mann-Whitney U from midranks, in float64: ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``.
    1 means every positive scores above every negative, 0.5 no better than chance.
    """
    x = torch.as_tensor(scores).detach().cpu().double().reshape(-1)
    y = torch.as_tensor(positive).detach().cpu().reshape(-1)
    if y.dtype != torch.bool:
        if not torch.isin(y, torch.tensor([0, 1], dtype=y.dtype)).all():
            raise ValueError("positive must hold booleans (or 0/1); pass e.g. labels == 'bypass'.")
        y = y.bool()
    if x.shape != y.shape:
        raise ValueError(f"{x.numel()} scores but {y.numel()} labels; pass one label per score.")
    if not torch.isfinite(x).all():
        raise NonFiniteError("scores hold NaN/inf, which have no rank; drop those prompts first.")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise EmptyGroupError(
            f"AUROC needs both classes, got {n_pos} positive and {n_neg} negative; "
            "add prompts of the missing outcome (e.g. more attack families)."
        )
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    # Tied scores share the mean of the ranks they occupy: first + (count - 1) / 2, 1-based.
    last = counts.cumsum(0).double()
    midrank = last - (counts.double() - 1) / 2
    r_pos = midrank[inverse][y].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ranks(x: Tensor) -> Tensor:
    """Midranks (1-based, ties share their mean rank), float64."""
    order = torch.argsort(x, stable=True)
    r = torch.empty_like(x)
    r[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for v in torch.unique(x):
        tie = x == v
        if int(tie.sum()) > 1:
            r[tie] = r[tie].mean()
    return r


def spearman(x: Any, y: Any) -> float:
    """Spearman's rank correlation: Pearson's correlation of the midranks (ties count their mean rank)."""
    a = torch.as_tensor(x).detach().cpu().double().reshape(-1)
    b = torch.as_tensor(y).detach().cpu().double().reshape(-1)
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"spearman needs two equally long series of >= 2 values, got {a.numel()} and {b.numel()}.")
    ra, rb = _ranks(a) - (a.numel() + 1) / 2, _ranks(b) - (b.numel() + 1) / 2
    den = float(ra.norm() * rb.norm())
    return float((ra @ rb) / den) if den > 0 else float("nan")
