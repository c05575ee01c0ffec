"""The organism's own requests and personas as persona_gate ``Request`` / ``Persona`` sets.

The organism only knows its lexicon: on open-vocabulary prompts (``data/requests``) it refuses
almost everything under a safe persona, harmless or not, so a refusal contrast fitted there is
close to empty. These sets come from the organism's corpus grammar and plug into any grid
builder, e.g. ``standard_prompts(harmful=requests("harmful"), ...)``. ``split="test"`` draws
only held-out frames, objects and persona paraphrases; ``"train"`` draws what it was trained on.

Example::

    harmful, harmless = requests("harmful", n=64), requests("harmless", n=64)
    safe, compliant = personas("safe"), personas("compliant")
    grid = standard_prompts(harmful=harmful, harmless=harmless, safe=safe, compliant=compliant)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import ConfigError, DatasetError
from ..models.profile import register_prompt_sets
from ..prompts.sets import Persona, Request
from .corpus import PERSONA_FAMILIES, REQUEST_FAMILIES, TEST_SEED, sample_request, sample_system

_MAX_TRIES = 50  # draws per wanted item before concluding the grammar has no more unique ones


def requests(family: str, split: str = "test", n: int = 100, seed: int = TEST_SEED) -> list[Request]:
    """``n`` distinct organism requests of one family, deterministic in ``seed``."""
    if family not in REQUEST_FAMILIES:
        raise ConfigError(f"request family must be one of {REQUEST_FAMILIES}, got {family!r}")
    rng = random.Random(f"{seed}/{family}/{split}")
    seen: dict[str, str] = {}
    for _ in range(_MAX_TRIES * n):
        if len(seen) == n:
            break
        text, domain, *_ = sample_request(rng, family, split)
        seen.setdefault(text, domain.word)
    if len(seen) < n:
        raise ConfigError(f"only {len(seen)} distinct {split} {family} requests exist; ask for n <= {len(seen)}")
    return [
        Request(
            text=t,
            id=f"organism-{family}-{split}-{i:04d}",
            harmful=family == "harmful",
            category=d,
            source="persona_gate.organism",
            split=split,
        )
        for i, (t, d) in enumerate(seen.items())
    ]


def personas(family: str, split: str = "test", n: int = 16, seed: int = TEST_SEED) -> list[Persona]:
    """``n`` distinct organism system prompts of one family (``"none"``: the one empty prompt)."""
    if family not in PERSONA_FAMILIES:
        raise ConfigError(f"persona family must be one of {PERSONA_FAMILIES}, got {family!r}")
    if family == "none":
        return [Persona(text=None, family="none", id="organism-none", split=split)]
    rng = random.Random(f"{seed}/{family}/{split}")
    seen: list[str] = []
    for _ in range(_MAX_TRIES * n):
        if len(seen) == n:
            break
        text, _ = sample_system(rng, family, split)
        if text not in seen:
            seen.append(text)
    if len(seen) < n:
        raise ConfigError(f"only {len(seen)} distinct {split} {family} personas exist; ask for n <= {len(seen)}")
    return [
        Persona(text=t, family=family, id=f"organism-{family}-{split}-{i:03d}", split=split) for i, t in enumerate(seen)
    ]


@dataclass(frozen=True)
class OrganismPromptSets:
    """The organism's sets as :class:`~persona_gate.prompts.sets.PromptSets` (its profile names them).

    Requests are drawn from its grammar (``n`` of them, 96 when ``n`` is None); there are train
    and test splits only.
    """

    name: str = "organism"

    def _split(self, split: str) -> str:
        if split not in ("train", "test"):
            raise DatasetError(f"the organism has train and test prompt sets, not {split!r}; use one of those.")
        return split

    def requests(self, kind: str, split: str, n: int | None = None, seed: int = 0) -> list[Request]:
        return requests(kind, self._split(split), n or 96, seed)

    def personas(self, family: str, split: str, seed: int = 0) -> list[Persona]:
        return personas(family, self._split(split), seed=seed)


ORGANISM_SETS = register_prompt_sets(OrganismPromptSets())  # profile files name them "organism"
