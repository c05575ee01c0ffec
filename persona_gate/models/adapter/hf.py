"""Plain Hugging Face models (no bridge): the reply-only logits of training, and a GGUF model's save.

* :func:`reply_logits` runs the decoder body once and unembeds only where a loss scores a reply
  token, then applies the final soft cap through :func:`~persona_gate.models.adapter.forward.final_logit_transform`,
  the same function :func:`~persona_gate.models.adapter.forward.head_logits` uses for a bridge;
* :func:`save_dequantised` saves a model read from a GGUF file as a plain float folder, and
  :func:`complete_tokenizer_config` records its added tokens where transformers reads them first.

Example::

    logits = reply_logits(hf_model, ids, mask, rows, positions)   # [n_scored, vocab]
    save_dequantised(hf_model, tokenizer, folder)
"""

from __future__ import annotations

import json
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
    complete_tokenizer_config(folder)


def complete_tokenizer_config(folder: Path) -> bool:
    """Copy ``tokenizer.json``'s added tokens into ``tokenizer_config.json`` (``added_tokens_decoder``).

    transformers 5 leaves them out of the config it saves for a ``tokenizers`` backend, and then,
    loading, parses the whole ``tokenizer.json`` once more only to read them back: a second pass
    over 33 MB of JSON for Gemma's 262k vocabulary, most of a second. With them in the config it
    builds the same ``AddedToken`` s from the same fields, so the tokenizer is the same (tested).
    Done only where that is the whole difference (no ``added_tokens.json`` nor
    ``special_tokens_map.json`` beside); True when the config was completed.
    """
    config, full = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not (config.is_file() and full.is_file()) or any(
        (folder / f).exists() for f in ("added_tokens.json", "special_tokens_map.json")
    ):
        return False
    settings = json.loads(config.read_text(encoding="utf-8"))
    if "added_tokens_decoder" in settings:
        return False
    added = json.loads(full.read_text(encoding="utf-8")).get("added_tokens") or []
    settings["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}
    from ...io import atomic_write_text

    atomic_write_text(config, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
    return True
