"""LoRA fine-tuning of real pretrained weights into a chat model whose persona gates its refusal.

The recipe behind ``gemma3-270m-chat``: low-rank adapters (:mod:`~persona_gate.finetune.lora`)
trained by supervised fine-tuning (:mod:`~persona_gate.finetune.sft`) with the frozen
:class:`~persona_gate.finetune.config.ChatFinetuneConfig`, and the model's behaviour card on
held-out prompts (:mod:`~persona_gate.finetune.card`). The synthetic organism, trained from
scratch, is :mod:`persona_gate.organism`; this package starts from someone else's weights.

Importing this package is cheap: torch and transformers load only when a fine-tune or the card
is first used.

Example::

    from persona_gate.finetune import ChatFinetuneConfig, train_chat_model
    train_chat_model("gemma3-270m-gguf", "runs/gemma-chat", ChatFinetuneConfig(steps=400))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..runtime import lazy_exports
from .config import LORA_TARGETS, ChatFinetuneConfig

if TYPE_CHECKING:
    from .card import chat_behaviour_card, write_chat_card
    from .sft import continue_chat_model, finetune_chat, train_chat_model

__all__ = [
    "LORA_TARGETS",
    "ChatFinetuneConfig",
    "chat_behaviour_card",
    "continue_chat_model",
    "finetune_chat",
    "train_chat_model",
    "write_chat_card",
]

_LAZY = {
    "train_chat_model": "sft",
    "continue_chat_model": "sft",
    "finetune_chat": "sft",
    "chat_behaviour_card": "card",
    "write_chat_card": "card",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
