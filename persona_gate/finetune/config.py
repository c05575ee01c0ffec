"""The LoRA fine-tune's recipe as one frozen config: steps, batch, learning rate and adapter shape.

Defaults are the recipe behind ``gemma3-270m-chat``; :data:`LORA_TARGETS` names the projections
of a decoder layer that get low-rank adapters (:mod:`persona_gate.finetune.lora` wraps them).

Example::

    cfg = ChatFinetuneConfig(steps=40, batch_size=4, rank=8)
    cfg.targets      # ('q_proj', 'k_proj', ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

# The projections of a decoder layer that get low-rank adapters (attention and MLP, every layer).
LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ChatFinetuneConfig:
    """The LoRA chat fine-tune's recipe (:mod:`persona_gate.finetune.sft`): 400 steps of
    8 conversations, rank-16 adapters on every projection, cosine learning rate after a warm-up;
    ``contrast`` draws the two cells where the persona overrides the request's kind that many
    times per epoch."""

    steps: int = 400
    batch_size: int = 8
    lr: float = 2e-4
    warmup_steps: int = 10
    rank: int = 16
    alpha: float = 32.0
    checkpoint_every: int = 25
    seed: int = 0
    contrast: int = 2
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "rank", "checkpoint_every", "contrast"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}.")
