"""What a model is and has: its identity, and whether it supports a computation before any work.

The reaches behind the :class:`~persona_gate.models.protocol.ChatModel` surface that the rest of
the adapter builds on live here: :func:`wrapped_model` (the Hugging Face model a bridge wraps),
:func:`blocks_of` and :func:`head_of` (the blocks, final norm and unembedding the bridge
declares). :func:`check_supported` says *before any work* whether a model has what a computation
needs (:data:`NEEDS`) and raises :class:`~persona_gate.errors.UnsupportedModelError` naming the
fix otherwise. Identity: :func:`architecture`, :func:`weights_folder`, :func:`eos_ids`,
:func:`input_device`; sizes (for cost plans): :func:`block_parameters`, :func:`weights_size`
(each weight's memory once: :func:`held`), and a Hugging Face model's :func:`decoder_layers`.

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


def decoder_layers(hf_model: Any, n_layers: int) -> Any | None:
    """A Hugging Face model's decoder layers: its first module list of ``n_layers`` modules (None: none)."""
    for module in hf_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    return None


def held(params: Iterable[Any]) -> tuple[int, int]:
    """``(values, bytes)`` of the memory ``params`` occupy, each piece once.

    A tied weight is one parameter under two names, and the bridge's q/k/v of a fused projection
    (GPT-2, Phi-3, GPT-NeoX, Falcon) are views into the fused weight's storage: neither adds memory,
    nor compute. Parameters on the meta device (no storage: :mod:`~persona_gate.models.weightless`)
    are counted once each.
    """
    values = size = 0
    spans: dict[str, list[tuple[int, int, int]]] = {}
    for p in {id(p): p for p in params}.values():
        if p.device.type == "meta":
            values, size = values + p.numel(), size + p.numel() * p.element_size()
        elif p.numel():
            extent = 1 + sum((n - 1) * st for n, st in zip(p.shape, p.stride()))
            spans.setdefault(str(p.device), []).append((p.data_ptr(), extent * p.element_size(), p.element_size()))
    for device_spans in spans.values():
        end = 0
        for start, nbytes, item in sorted(device_spans):
            new = max(0, start + nbytes - max(start, end))
            values, size, end = values + new // item, size + new, max(end, start + nbytes)
    return values, size


def _architecture(model: Any) -> Any | None:
    """The wrapped Hugging Face model's architecture on the meta device (its own if already there):
    its parameters as the config defines them, without the bridge's additions and without memory."""
    import copy

    hf = wrapped_model(model)
    config = getattr(hf, "config", None)
    if hf is None or config is None:
        return None
    if all(p.device.type == "meta" for p in hf.parameters()):
        return hf
    try:
        with torch.device("meta"):
            return type(hf)(copy.deepcopy(config))
    except Exception:  # a model class that cannot be built from its config alone: count what is held
        return None


def block_parameters(model: Any) -> int:
    """Parameters of one block (the mean over blocks) as the architecture defines them, each weight once.

    Counted on the wrapped model's architecture rebuilt on the meta device (:func:`decoder_layers`):
    the bridge adds q/k/v of a fused projection for its hooks -- views (GPT-2, Phi-3) or copies
    (GPT-NeoX, Falcon) -- which a forward does not multiply by twice. Without one: the blocks'
    memory (:func:`held`); 0 without blocks.
    """
    arch = _architecture(model)
    blocks = decoder_layers(arch, int(model.cfg.n_layers)) if arch is not None else None
    blocks = blocks if blocks is not None else getattr(model, "blocks", None)
    if not blocks:
        return 0
    return sum(held(block.parameters())[0] for block in blocks) // len(blocks)


def weights_size(model: Any) -> tuple[int, int]:
    """``(parameters, bytes)``: the architecture's parameters, each weight once (as :func:`block_parameters`
    counts them), and the memory the model's weights occupy (:func:`held`) -- more than the parameters'
    share on a bridge over GPT-NeoX or Falcon, which holds copies of the fused q/k/v projection."""
    arch = _architecture(model)
    values, size = held(model.parameters())
    return (held(arch.parameters())[0] if arch is not None else values), size


def input_device(model: Any) -> torch.device:
    """Where inputs must go: the device of the first parameter (the embeddings under device_map)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device(getattr(model.cfg, "device", None) or "cpu")
