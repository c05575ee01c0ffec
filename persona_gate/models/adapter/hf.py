"""Plain Hugging Face models (no bridge): the reply-only logits of training, and a GGUF model's save.

* :func:`reply_logits` runs the decoder body once and unembeds only where a loss scores a reply
  token, then applies the final soft cap through :func:`~persona_gate.models.adapter.forward.final_logit_transform`,
  the same function :func:`~persona_gate.models.adapter.forward.head_logits` uses for a bridge;
* :func:`save_dequantised` saves a model read from a GGUF file as a plain float folder.

Example::

    logits = reply_logits(hf_model, ids, mask, rows, positions)   # [n_scored, vocab]
    save_dequantised(hf_model, tokenizer, folder)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from .forward import final_logit_transform


def reply_logits(hf_model: Any, input_ids: Tensor, attention_mask: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
    """Logits at ``(rows[i], positions[i])`` only, for a loss on reply tokens: the decoder body runs
    once and the unembedding only where a prediction is scored (with a 262k vocabulary the
    unembedding of every position would be most of a training step). Applies the model's final
    logit soft-cap when its config declares one."""
    body = hf_model.get_decoder() if hasattr(hf_model, "get_decoder") else hf_model.model
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    logits = hf_model.get_output_embeddings()(hidden[rows, positions])
    return final_logit_transform(hf_model, logits)


def save_dequantised(hf_model: Any, tokenizer: Any, folder: Path) -> None:
    """``save_pretrained`` for a model read from a GGUF file, whose weights transformers has already
    de-quantised to floats but which still carries the GGUF quantizer (and so refuses to save):
    the quantizer and its config entry are set aside for the save and put back afterwards, so the
    folder loads as a plain float model."""
    quantizer = getattr(hf_model, "hf_quantizer", None)
    had_qc = hasattr(hf_model.config, "quantization_config")
    qc = getattr(hf_model.config, "quantization_config", None)
    try:
        hf_model.hf_quantizer = None
        if had_qc:
            del hf_model.config.quantization_config
        hf_model.save_pretrained(folder, safe_serialization=True)
    finally:
        hf_model.hf_quantizer = quantizer
        if had_qc:
            hf_model.config.quantization_config = qc
    tokenizer.save_pretrained(folder)
