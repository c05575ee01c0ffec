"""Forwards and the head: logits at the last position only, and residual vectors put through the head.

* :func:`last_logits` passes ``logits_to_keep=1`` when the wrapped model takes it (on a 262k
  vocabulary the unembedding of every position would cost more than the rest of the forward);
  :func:`unembedded_rows` says how many positions it unembeds (for cost plans).
* :func:`head_logits` applies the final norm and unembedding that the bridge itself declares for
  the architecture (its ``ln_final`` and ``unembed`` components, so every architecture
  TransformerLens supports works without a list of our own), then :func:`final_logit_transform`.
* :func:`final_logit_transform` is the one place the transform after the unembedding is applied
  -- Gemma's final logit soft cap ``cap * tanh(logits / cap)``, Granite's and Cohere's scaling --
  for a bridge and for a plain Hugging Face model alike
  (:func:`~persona_gate.models.adapter.hf.reply_logits` calls it too).

Example::

    logits = last_logits(model, ids)             # [batch, vocab]
    again = head_logits(model, resid_post[:, -1])  # the same numbers from the last residual
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from ..protocol import ChatModel
from .support import check_supported, head_of, wrapped_model


def _takes_logits_to_keep(model: ChatModel) -> bool:
    hf = wrapped_model(model)
    if hf is None:
        return False
    try:
        return "logits_to_keep" in inspect.signature(hf.forward).parameters
    except (TypeError, ValueError):
        return False


def last_logits(model: ChatModel, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Logits at the last position ``[batch, vocab]``, unembedding nothing else where the model allows."""
    kwargs: dict[str, Any] = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if wrapped_model(model) is not None:
        kwargs["use_cache"] = False
    if _takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = 1
    return model(input_ids, **kwargs)[:, -1]


def unembedded_rows(model: ChatModel, rows: int, seq: int) -> int:
    """Positions :func:`last_logits` unembeds for a ``rows x seq`` batch (for cost plans)."""
    return rows if _takes_logits_to_keep(model) else rows * seq


def final_logit_transform(model: Any, logits: Tensor) -> Tensor:
    """What the architecture applies to its logits after the unembedding (the final soft cap).

    ``model`` is a TransformerBridge or a plain Hugging Face model. A bridge declares the transform
    per architecture (``model.adapter.apply_output_logits_transform``): Gemma 2's final soft cap,
    which the HF model applies in its forward, not in its unembedding, and Granite's and Cohere's
    scaling. A plain Hugging Face model declares only its soft cap (``config.final_logit_softcapping``),
    applied here as ``tanh(logits / cap) * cap``; without one the logits are returned as they are.
    """
    declared = getattr(getattr(model, "adapter", None), "apply_output_logits_transform", None)
    if callable(declared):
        return declared(logits)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def head_logits(model: ChatModel, x: Tensor) -> Tensor:
    """Final norm, unembedding and output transform (soft-capping) of residual-stream vectors ``x`` (``[..., d_model]``)."""
    head = head_of(model)
    if head is None:
        check_supported(model, "replay", what="unembedding a residual stream")
    norm, unembed = head  # type: ignore[misc]
    logits = unembed(norm(x) if norm is not None else x)
    return final_logit_transform(model, logits)
