"""What a model is and has: its identity, and whether it supports a computation before any work.

The reaches behind the :class:`~persona_gate.models.protocol.ChatModel` surface that the rest of
the adapter builds on live here: :func:`wrapped_model` (the Hugging Face model a bridge wraps),
:func:`blocks_of` and :func:`head_of` (the blocks, final norm and unembedding the bridge
declares). :func:`check_supported` says *before any work* whether a model has what a computation
needs (:data:`NEEDS`) and raises :class:`~persona_gate.errors.UnsupportedModelError` naming the
fix otherwise. Identity: :func:`architecture`, :func:`weights_folder`, :func:`eos_ids`,
:func:`input_device`.

These take any object, not only a ``ChatModel``: telling what a model lacks is their job.

Example::

    missing_needs(model, ["hooks", "replay"])    # [] : supported
    check_supported(model, "replay", what="activation patching")
    architecture(model)                          # 'LlamaForCausalLM'
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ...errors import UnsupportedModelError
from ..protocol import ChatModel

# What each computation needs of a model; see check_supported.
NEEDS: dict[str, str] = {
    "hooks": "TransformerLens hook points (cfg, tokenizer, hooks)",
    "blocks": "a list of transformer blocks (model.blocks)",
    "replay": "blocks that can be re-run from recorded inputs, and a final norm and unembedding",
}


def wrapped_model(model: Any) -> Any | None:
    """The Hugging Face model a TransformerBridge wraps (None for other models)."""
    return getattr(model, "original_model", None)


def _hf_config(model: Any) -> Any | None:
    hf = wrapped_model(model)
    return getattr(hf, "config", None)


def missing_needs(model: Any, needs: Iterable[str]) -> list[str]:
    """The entries of ``needs`` that ``model`` lacks (empty: supported)."""
    out = []
    for need in needs:
        if need not in NEEDS:
            raise ValueError(f"unknown need {need!r}; use one of {', '.join(NEEDS)}")
        if need == "hooks":
            ok = all(hasattr(model, a) for a in ("cfg", "tokenizer", "hooks"))
        elif need == "blocks":
            ok = blocks_of(model) is not None
        else:  # replay
            ok = blocks_of(model) is not None and head_of(model) is not None and wrapped_model(model) is not None
        if not ok:
            out.append(need)
    return out


def check_supported(model: Any, *needs: str, what: str = "this computation") -> None:
    """Raise :class:`UnsupportedModelError` unless ``model`` has every one of ``needs``."""
    missing = missing_needs(model, needs or ("hooks",))
    if missing:
        lacks = "; ".join(NEEDS[m] for m in missing)
        raise UnsupportedModelError(
            f"{what} needs {lacks}, which this {type(model).__name__} ({architecture(model)}) lacks; load the "
            "model with persona_gate.load_chat_model (a TransformerBridge declares its blocks, final norm and "
            "unembedding for every architecture TransformerLens supports), or skip this stage."
        )


def blocks_of(model: Any) -> Any:
    """The model's transformer blocks, when it has one per layer (None otherwise)."""
    blocks = getattr(model, "blocks", None)
    try:
        return blocks if blocks is not None and len(blocks) == int(model.cfg.n_layers) else None
    except (TypeError, AttributeError):
        return None


def head_of(model: Any) -> tuple[Any, Any] | None:
    """The bridge's own final norm and unembedding components (what it declares per architecture)."""
    norm, unembed = getattr(model, "ln_final", None), getattr(model, "unembed", None)
    if unembed is None or not callable(unembed):
        return None
    return norm, unembed


def architecture(model: Any) -> str:
    """The model's architecture name (e.g. ``LlamaForCausalLM``), as the bridge or HF records it."""
    cfg = getattr(model, "cfg", None)
    arch = getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None)
    if arch:
        return str(arch)
    hf = wrapped_model(model)
    return type(hf if hf is not None else model).__name__


def weights_folder(model: Any) -> Path | None:
    """The local folder the model's weights were loaded from, if any (for its model profile)."""
    cfg = _hf_config(model)
    where = getattr(cfg, "_name_or_path", None) or getattr(cfg, "name_or_path", None)
    if not where:
        return None
    path = Path(str(where)).expanduser()
    return path if path.is_dir() else None


def eos_ids(model: ChatModel) -> list[int]:
    """Every end-of-sequence id: the tokenizer's and the checkpoint's generation config's."""
    ids: set[int] = set()
    tok_eos = getattr(model.tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(int(tok_eos))
    gen_cfg = getattr(wrapped_model(model), "generation_config", None)
    cfg_eos = getattr(gen_cfg, "eos_token_id", None)
    if cfg_eos is not None:
        ids.update(int(i) for i in (cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos]))
    return sorted(ids)


def input_device(model: Any) -> torch.device:
    """Where inputs must go: the device of the first parameter (the embeddings under device_map)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device(getattr(model.cfg, "device", None) or "cpu")
