"""The paper's two standard contrasts, fitted in one pass over one prompt grid.

Four groups of prompts share one request set:

    safe/harmful   safe/harmless   compliant/harmful   compliant/harmless

* refusal = safe/harmful - safe/harmless, read at the last prompt token (where the first
  response token is decided);
* persona = compliant/* - safe/*, read as the mean over the system-prompt tokens (under causal
  attention those tokens see only the persona, so the request cannot leak in). The same contrast
  at the last token is also fitted: on trained chat models it tends to be ~ -refusal, which is
  why the span mean is the default.

Example::

    pr = fit_persona_and_refusal(load_chat_model("organism"))
    print(format_summary(pr))
    pr.persona.save("runs/persona")
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EmptyGroupError
from ..models.profile import profile_of
from ..models.protocol import ChatModel
from ..prompts.positions import LAST, SYSTEM_MEAN, Position, parse_position
from ..prompts.sets import ChatPrompt, Persona, Request, paired_grid
from ..sites import sites_for
from .directions import DirectionSet, GroupMeans, fit_group_means

GROUPS = ("safe/harmful", "safe/harmless", "compliant/harmful", "compliant/harmless")


def standard_prompts(
    *,
    model: ChatModel | None = None,
    harmful: Sequence[Request] | None = None,
    harmless: Sequence[Request] | None = None,
    safe: Sequence[Persona] | None = None,
    compliant: Sequence[Persona] | None = None,
    n_per_group: int | None = None,
    split: str = "train",
    seed: int = 0,
) -> list[ChatPrompt]:
    """The four-group grid; requests are subsampled (seeded) to ``n_per_group`` if given.

    Sets not passed come from the model's profile (:func:`persona_gate.models.profile.profile_of`):
    persona_gate's English sets under ``data/`` by default; the bundled organism's folder declares
    its own corpus' requests and personas (it knows only its small lexicon). Without a model, the
    open sets.
    """
    if n_per_group is not None and (
        isinstance(n_per_group, bool) or not isinstance(n_per_group, int) or n_per_group < 0
    ):
        raise EmptyGroupError(
            f"n_per_group must be a positive number of requests, got {n_per_group!r}; pass e.g. 32 (or None for all)."
        )
    sets = profile_of(model).prompt_sets
    harmful = list(harmful if harmful is not None else sets.requests("harmful", split, n_per_group, seed))
    harmless = list(harmless if harmless is not None else sets.requests("harmless", split, n_per_group, seed))
    safe = list(safe if safe is not None else sets.personas("safe", split, seed))
    compliant = list(compliant if compliant is not None else sets.personas("compliant", split, seed))
    if n_per_group is not None:
        rng = random.Random(seed)
        harmful = rng.sample(harmful, min(n_per_group, len(harmful)))
        harmless = rng.sample(harmless, min(n_per_group, len(harmless)))
    return (
        paired_grid(safe, harmful, "safe/harmful")
        + paired_grid(safe, harmless, "safe/harmless")
        + paired_grid(compliant, harmful, "compliant/harmful")
        + paired_grid(compliant, harmless, "compliant/harmless")
    )


@dataclass(frozen=True)
class PersonaRefusal:
    """Refusal and persona directions fitted together, plus the group means they came from."""

    refusal: DirectionSet
    persona: DirectionSet
    persona_last: DirectionSet
    means: GroupMeans

    def rows(self) -> list[dict[str, Any]]:
        """One row per site: norms and cosines (the per-layer summary)."""
        cos = self.persona.cosine(self.refusal)
        cos_last = self.persona_last.cosine(self.refusal)
        return [
            {
                "site": str(s),
                "layer": s.layer,
                "refusal_norm": float(self.refusal.raw_norms[i]),
                "persona_norm": float(self.persona.raw_norms[i]),
                "cos_persona_refusal": float(cos[i]),
                "cos_persona_last_refusal": float(cos_last[i]),
            }
            for i, s in enumerate(self.refusal.sites)
        ]


def fit_persona_and_refusal(
    model: ChatModel,
    prompts: Sequence[ChatPrompt] | None = None,
    *,
    layers: Sequence[int] | None = None,
    kind: str = "resid_pre",
    refusal_position: Position | str = LAST,
    persona_position: Position | str = SYSTEM_MEAN,
    n_per_group: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    seed: int = 0,
) -> PersonaRefusal:
    """Fit refusal and persona directions at every requested layer in one streaming pass."""
    from ..models.loading import check_model

    check_model(model)
    prompts = (
        list(prompts) if prompts is not None else standard_prompts(model=model, n_per_group=n_per_group, seed=seed)
    )
    sites = sites_for(model, layers, kind)
    positions = list(
        dict.fromkeys([str(parse_position(refusal_position)), str(parse_position(persona_position)), "last"])
    )
    config = {
        "kind": kind,
        "layers": [s.layer for s in sites],
        "refusal_position": positions[0],
        "persona_position": str(parse_position(persona_position)),
        "n_prompts": len(prompts),
        "batch_size": batch_size,
    }
    means = fit_group_means(
        model, prompts, sites, positions, batch_size=batch_size, progress=progress, seed=seed, config=config
    )
    return PersonaRefusal(
        refusal=means.direction("refusal", "safe/harmful", "safe/harmless", refusal_position),
        persona=means.direction(
            "persona", ("compliant/harmful", "compliant/harmless"), ("safe/harmful", "safe/harmless"), persona_position
        ),
        persona_last=means.direction(
            "persona@last", ("compliant/harmful", "compliant/harmless"), ("safe/harmful", "safe/harmless"), "last"
        ),
        means=means,
    )


def format_summary(pr: PersonaRefusal) -> str:
    """A fixed-width per-layer table for terminals and notebooks."""
    head = f"{'site':<14}{'|refusal|':>11}{'|persona|':>11}{'cos(p,r)':>10}{'cos(p@last,r)':>15}"
    model = pr.means.provenance.get("model", {})
    counts = ", ".join(f"{g} {n}" for g, n in sorted(pr.means.counts.items()))
    lines = [
        f"model: {model.get('name', '?')} ({model.get('n_layers', '?')} layers, d_model {model.get('d_model', '?')}, "
        f"{model.get('dtype', '?')}); prompts: {counts}",
        f"refusal = {pr.refusal.positive} - {pr.refusal.negative} at {pr.refusal.position}",
        f"persona = {pr.persona.positive} - {pr.persona.negative} at {pr.persona.position}",
        head,
        "-" * len(head),
    ]
    for r in pr.rows():
        lines.append(
            f"{r['site']:<14}{r['refusal_norm']:>11.3f}{r['persona_norm']:>11.3f}"
            f"{r['cos_persona_refusal']:>10.3f}{r['cos_persona_last_refusal']:>15.3f}"
        )
    return "\n".join(lines)
