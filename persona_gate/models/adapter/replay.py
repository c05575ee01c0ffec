"""Block re-runs: record every block's input during one clean forward, re-run blocks ``k..L-1`` from it.

:func:`record_blocks` records every block's input and call arguments during one clean forward
(rotary embeddings, masks, ALiBi: whatever the architecture passes), and :func:`run_blocks`
re-runs blocks ``k..L-1`` from a recorded input (activation patching re-runs only what a patch at
layer ``k`` changes). A re-run takes whole cell-major copies of the recorded batch, each copy
carrying its own intervention; :func:`_tile` widens the recorded arguments to match.

Example::

    rec, logits = record_blocks(model, ids)      # clean run: inputs of every block
    x = run_blocks(model, rec, 3, rec.inputs[3])
    logits = head_logits(model, x[:, -1])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ...errors import UnsupportedModelError
from ..protocol import ChatModel
from .forward import last_logits
from .support import architecture, check_supported

# Keyword names under which Hugging Face blocks receive the KV cache (they changed across
# transformers releases); a re-run from recorded inputs must pass none of them.
CACHE_ARGUMENTS: tuple[str, ...] = ("past_key_values", "past_key_value", "layer_past", "cache", "use_cache")


def _block_signature(block: Any) -> inspect.Signature | None:
    """The wrapped HF block's own ``forward`` signature, without ``self`` (from its class: the bridge
    replaces the instance's ``forward`` with a ``(*args, **kwargs)`` wrapper). GPT-2 passes its mask
    positionally after the cache, so arguments are named by binding, not by position."""
    target = getattr(block, "original_component", block)
    try:
        sig = inspect.signature(type(target).forward)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())[1:]
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return None
    return sig.replace(parameters=params)


@dataclass
class BlockRecord:
    """Every block's input ``inputs[k]`` and its other call arguments, from one clean forward."""

    inputs: dict[int, Tensor] = field(default_factory=dict)
    arguments: dict[int, dict[str, Any]] = field(default_factory=dict)
    called: set[int] = field(default_factory=set)
    batch: int = 1  # rows of the recorded forward


def _recorder(record: BlockRecord, k: int, sig: inspect.Signature | None, keep_input: bool = True) -> Callable:
    def fn(module: Any, args: tuple, kwargs: dict) -> None:
        if sig is not None:
            bound = dict(sig.bind_partial(*args, **kwargs).arguments)
            for p in sig.parameters.values():  # a **kwargs parameter binds as one dict
                if p.kind is inspect.Parameter.VAR_KEYWORD and isinstance(bound.get(p.name), dict):
                    bound.update(bound.pop(p.name))
            name = next(iter(sig.parameters))
        else:  # an opaque block: positional hidden state, keyword rest
            bound = {"hidden_states": args[0] if args else kwargs["hidden_states"], **kwargs}
            name = "hidden_states"
        hidden = bound.pop(name)  # re-runs pass it first, positionally
        record.called.add(k)
        if keep_input:
            record.inputs[k] = hidden.detach().clone()
        record.arguments[k] = {key: v for key, v in bound.items() if key not in CACHE_ARGUMENTS}

    return fn


def record_blocks(
    model: ChatModel,
    input_ids: Tensor,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
    *,
    attention_mask: Tensor | None = None,
    keep: Iterable[int] | None = None,
) -> tuple[BlockRecord, Tensor]:
    """A clean forward of ``input_ids`` recording every block's input; returns it and the last logits.

    ``fwd_hooks`` ride along (e.g. to keep activations of the same run, or interventions shared
    by every later re-run). ``attention_mask``: of a left-padded batch. ``keep``: the blocks whose
    inputs are kept (default all; every block's call arguments are kept regardless).
    """
    check_supported(model, "replay", what="re-running blocks")
    record = BlockRecord(batch=int(input_ids.shape[0]))
    blocks = model.blocks
    wanted = set(range(len(blocks)) if keep is None else keep)
    handles = [
        blocks[k].register_forward_pre_hook(
            _recorder(record, k, _block_signature(blocks[k]), k in wanted), with_kwargs=True
        )
        for k in range(len(blocks))
    ]
    try:
        with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
            logits = last_logits(model, input_ids, attention_mask)
    finally:
        for h in handles:
            h.remove()
    missing = [k for k in range(len(blocks)) if k not in record.called]
    if missing:
        check_supported(model, "replay", what=f"re-running blocks (blocks {missing} were never called)")
        raise UnsupportedModelError(
            f"blocks {missing} were never called in a forward of this {architecture(model)}; "
            "patching cannot re-run them. Load the model with persona_gate.load_chat_model."
        )
    return record, logits


def _tile(value: Any, copies: int, batch: int) -> Any:
    """A recorded argument of a ``batch``-row forward for ``copies`` cell-major copies of it.

    Hugging Face blocks receive batch-indexed tensors with the batch first (masks ``[b, 1, q, k]``,
    position ids, rotary tables ``[b, seq, d]``; ALiBi biases ``[b * heads, 1, k]``): those are
    repeated; batch-1 tensors (broadcast over the batch) are expanded; 1-d tensors (cache
    positions) and non-tensors are left as they are.
    """
    if isinstance(value, Tensor) and value.ndim >= 2:
        if value.shape[0] == 1:
            return value.expand(copies * batch, *value.shape[1:]) if copies * batch > 1 else value
        if copies > 1 and value.shape[0] % batch == 0:
            return value.repeat(copies, *([1] * (value.ndim - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_tile(v, copies, batch) for v in value)
    return value


def run_blocks(
    model: ChatModel,
    record: BlockRecord,
    start: int,
    hidden: Tensor,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
    *,
    snapshots: dict[int, Tensor | None] | None = None,
) -> Tensor:
    """Blocks ``start..L-1`` on ``hidden``; the residual after the last.

    ``hidden`` holds whole copies of the recorded batch, cell-major (rows ``c*b .. (c+1)*b - 1``
    are copy ``c`` of the ``b`` recorded rows): each copy can carry a different intervention.
    ``snapshots``: its keys are blocks whose input (before any of that block's hooks) is stored under them.
    """
    x = hidden
    rows, batch = int(hidden.shape[0]), record.batch
    if rows % batch:
        raise ValueError(f"a re-run needs whole copies of the recorded {batch}-row batch, got {rows} rows.")
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for j in range(start, len(model.blocks)):
            if snapshots is not None and j in snapshots:
                snapshots[j] = x
            kwargs = {key: _tile(v, rows // batch, batch) for key, v in record.arguments[j].items()}
            out = model.blocks[j](x, **kwargs)
            x = out[0] if isinstance(out, tuple) else out
    return x
