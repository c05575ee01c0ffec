"""The synthetic chat-model organism: a tiny Llama whose persona gates its refusal.

It refuses harmful requests under a safe persona, a neutral persona or no system prompt, and
complies under a compliant one; harmless requests are always answered. Because the rule is
known exactly, the organism is persona_gate's offline default model and its ground truth.
The bundled weights live in :data:`ORGANISM_DIR`; :func:`train_organism` rebuilds them and
:func:`behaviour_card` scores any HF model + tokenizer on the held-out grid, and
:mod:`~persona_gate.organism.prompt_sets` gives the organism's own requests and personas as
prompt sets (on open-vocabulary prompts it refuses nearly everything under a safe persona).

Importing this package is cheap: torch and transformers load only when a trainer or the card
is first used.

Example::

    from persona_gate.organism import organism_path, train_organism
    path = organism_path()                       # the bundled, already trained organism
    # train_organism("runs/organism", seed=0)   # rebuild it (4-7 min on 2 CPU cores)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..runtime import lazy_exports
from .paths import ORGANISM_DIR, organism_path

if TYPE_CHECKING:
    from .card import BehaviourCard, behaviour_card
    from .finetune import finetune_toward_compliance
    from .train import train_organism

__all__ = [
    "ORGANISM_DIR",
    "BehaviourCard",
    "behaviour_card",
    "finetune_toward_compliance",
    "organism_path",
    "train_organism",
]

_LAZY = {
    "train_organism": "train",
    "behaviour_card": "card",
    "BehaviourCard": "card",
    "finetune_toward_compliance": "finetune",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
