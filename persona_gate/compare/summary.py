"""Reading a checkpoint comparison without a model: refusal rates, their change, a table.

Imports foundations and the statistics only, so plots and reports can use it without loading
the model stack.

Example::

    refusal_change("runs/compare")        # {'safe/harmful': -0.91, ...}
    print(format_comparison("runs/compare"))
"""

from __future__ import annotations

import math
import os

from ..errors import ArtefactError
from ..results import LabelledResult
from ..scoring.stats import RateSummary

KIND = "checkpoint_comparison"


def as_comparison(result: LabelledResult | str | os.PathLike) -> LabelledResult:
    """A comparison result as is, or loaded from its saved folder; anything else raises."""
    r = result if isinstance(result, LabelledResult) else LabelledResult.load(result)
    if r.kind != KIND:
        raise ArtefactError(f"this is a {r.kind!r} result, not a {KIND!r} one; pass what compare_checkpoints returned.")
    return r


def refusal_rates(result: LabelledResult | str | os.PathLike) -> dict[str, dict[str, RateSummary]]:
    """``{checkpoint: {group: RateSummary}}``: refusal rate with its Wilson 95% interval."""
    result = as_comparison(result)
    return {
        name: {g: RateSummary.of(int(s["k"]), int(s["n"])) for g, s in groups.items()}
        for name, groups in result.baselines["refusal"].items()
    }


def refusal_change(result: LabelledResult | str | os.PathLike) -> dict[str, float]:
    """Per group: B's refusal rate minus A's (negative = B refuses less)."""
    rates = refusal_rates(result)
    return {g: rates["b"][g].rate - rates["a"][g].rate for g in rates["a"]}


def format_comparison(result: LabelledResult | str | os.PathLike) -> str:
    """A fixed-width per-layer table (B against A) and the refusal-rate change, for terminals."""
    result = as_comparison(result)
    b = result.sel(checkpoint="b")
    a = result.sel(checkpoint="a")
    cfg = result.config

    def f(x: float) -> str:  # signed, NaN-safe
        return "   nan" if math.isnan(x) else f"{x:+6.2f}"

    head = (
        f"{'layer':>5} {'cos(p)':>7} {'cos(r)':>7} {'|p| A':>7} {'|p| B':>7} {'|r| A':>7} {'|r| B':>7}"
        f" {'shift':>7} {'sep.':>7} {'shift@last':>11} {'sep.@last':>10}"
    )
    lines = [
        f"A: {cfg.get('model_a')}",
        f"B: {cfg.get('model_b')}",
        (
            f"persona at {cfg.get('persona_position')}, refusal at {cfg.get('refusal_position')}; "
            f"{cfg.get('n_per_group')} fit / {cfg.get('n_eval')} held-out prompts per group"
        ),
        (
            "cos: B's direction vs A's; shift: B's safe-persona harmful requests along A's persona direction "
            "(0 = A's safe, 1 = A's compliant); sep.: B's compliant - safe gap there (A = 1)"
        ),
        head,
        "-" * len(head),
    ]
    for i, layer in enumerate(result.coords["layer"]):
        lines.append(
            f"{layer:>5} {f(float(b['cos_persona'][i])):>7} {f(float(b['cos_refusal'][i])):>7}"
            f" {float(a['persona_norm'][i]):>7.2f} {float(b['persona_norm'][i]):>7.2f}"
            f" {float(a['refusal_norm'][i]):>7.2f} {float(b['refusal_norm'][i]):>7.2f}"
            f" {f(float(b['shift'][i])):>7} {f(float(b['separation'][i])):>7}"
            f" {f(float(b['shift_last'][i])):>11} {f(float(b['separation_last'][i])):>10}"
        )
    rates, flips = refusal_rates(result), result.baselines["flips"]
    lines += ["", f"{'refusal rate':<20} {'A':>26} {'B':>26} {'B - A':>7}  flips (A only / B only)"]
    for g in rates["a"]:
        ra, rb = rates["a"][g], rates["b"][g]
        lines.append(
            f"{g:<20} {ra.rate:>6.2f} [{ra.low:.2f}, {ra.high:.2f}] ({ra.k:>3}/{ra.n:<3}) "
            f"{rb.rate:>6.2f} [{rb.low:.2f}, {rb.high:.2f}] ({rb.k:>3}/{rb.n:<3}) {rb.rate - ra.rate:>+7.2f}"
            f"  {flips[g]['refused_a_only']} / {flips[g]['refused_b_only']}"
        )
    return "\n".join(lines)
