"""Prefix reuse: a grid of intervention cells scored without recomputing what is already known.

A cell (a steering strength at one layer, a window of ablation, a guard's cap) changes the
residual stream from its *first changed layer* ``k`` on, so blocks ``0..k-1`` compute for every
cell what they compute for the clean run. :func:`cell_logprobs` runs the clean prompts once per
padded batch, recording each block's input and call arguments
(:func:`~persona_gate.models.adapter.record_blocks`), and evaluates each cell from block ``k``:

* **prefix** -- a cell re-runs blocks ``k..L-1`` only;
* **nesting** -- a cell whose interventions are the first layers of another's (window
  ``[a, b]`` inside window ``[a, b']`` of the same direction) branches off that cell's run at
  layer ``b + 1`` and re-runs only blocks ``b+1..L-1`` (interventions say which of their hooks
  are interchangeable through ``reuse_keys``; without them a cell never nests);
* **no-op** -- a cell without interventions is the clean run and costs nothing;
* **tiling** -- cells of one first layer run side by side in one batch of up to ``max_tokens``
  tokens (each cell's hooks see only its own rows, so a hook's position mask and arithmetic are
  exactly those of a per-cell forward), and the unembedding of the last position runs once for
  the whole group of cells (on a 262k vocabulary reading its weights costs as much as a block).

The numbers equal one full forward per cell (``reuse=False``) up to float rounding; the tests
compare both routes on every tiny architecture. Where a re-run from a recorded block input is
not possible (a model the adapter cannot replay, a cell with hooks outside the blocks) the cell
falls back to a full forward.

``base`` interventions are shared by every cell (the compliant state by steering): they run in
the clean run, so their effect below layer ``k`` is in the recorded inputs, and their hooks at
layers ``>= k`` are installed again in each re-run.

Memory: the recorded block inputs at each first layer in use, ``n_prompts x seq x d_model``,
stay on the model's device for the whole grid (32 prompts of 80 tokens on a 4096-wide model:
40 MiB per layer in bfloat16); ``max_tokens`` caps one re-run's batch (default: 2048 tokens
on CPU, where larger batches are no faster, 32768 on an accelerator).

Example::

    cells = [[Steer(persona, a, layers=[k])] for k in (2, 4) for a in (1.0, 4.0)]
    clean, lps = cell_logprobs(model, prompts, cells)      # [prompt, vocab] each
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.activations import as_rendered, check_context, padded_batches
from ..core.prompt_layout import prompt_layout
from ..errors import ConfigError, HookNotFiredError
from ..models.adapter import head_logits, last_logits, missing_needs, record_blocks, run_blocks
from ..models.loading import check_model, model_device
from ..models.protocol import ChatModel
from ..sites import layer_of_hook

Hooks = list[tuple[str, Callable]]
CPU_TOKENS, ACCELERATOR_TOKENS = 2048, 32768
HEAD_ROWS = 256  # last-position rows unembedded per call


@dataclass(frozen=True)
class CellPlan:
    """How a grid will run: per cell the block it starts from (``L``: the clean run, free) and
    whether it runs as a whole forward; counts for cost plans."""

    starts: tuple[int, ...]  # first block each cell re-runs; n_layers = nothing to run
    full: tuple[bool, ...]  # a full forward (embedding included), no reuse
    n_layers: int

    def blocks(self) -> list[int]:
        """Blocks each prompt passes through per cell."""
        return [self.n_layers - s for s in self.starts]


def hooks_of(model: ChatModel, specs: Sequence[Any]) -> Hooks:
    return [h for spec in specs for h in spec.hooks(model)]


def _keys_of(model: ChatModel, specs: Sequence[Any]) -> tuple | None:
    """The cell's hooks as ``(layer, hook name, key)`` in the order they act (by layer; within a
    layer as installed): two cells whose sequences agree up to a layer compute the same until then.
    None: some intervention does not say what its hooks are (it never shares a run)."""
    out = []
    for spec in specs:
        keys_fn = getattr(spec, "reuse_keys", None)
        if keys_fn is None:
            return None
        keys: list[Hashable] = keys_fn(model)
        out.extend((layer_of_hook(name), name, key) for (name, _), key in zip(spec.hooks(model), keys))
    if any(layer is None for layer, _, _ in out):
        return None
    return tuple(sorted(out, key=lambda p: p[0]))  # stable: the order within a layer is kept


@dataclass
class _Chain:
    """A head cell and the cells nested in it: ``exits[x]`` leave the head's run before block ``x``."""

    head: int
    start: int
    keys: tuple | None
    exits: dict[int, list[int]]
    twins: list[int]  # cells identical to the head

    def shape(self) -> tuple[int, ...]:
        return tuple(sorted(self.exits))


def _chains(members: list[int], keys: list[tuple | None], start: int) -> list[_Chain]:
    last = {i: (max(p[0] for p in keys[i]) if keys[i] else None) for i in members}  # type: ignore[union-attr]
    order = sorted(members, key=lambda i: -(last[i] if last[i] is not None else 10**9))
    chains: list[_Chain] = []
    for i in order:
        home = None
        if keys[i] is not None:
            for ch in chains:
                if ch.keys is not None and tuple(p for p in ch.keys if p[0] <= last[i]) == keys[i]:  # type: ignore[operator]
                    home = ch
                    break
        if home is None:
            chains.append(_Chain(i, start, keys[i], {}, []))
        elif last[i] == last[home.head]:
            home.twins.append(i)
        else:
            home.exits.setdefault(last[i] + 1, []).append(i)  # type: ignore[operator]
    return chains


def plan_cells(
    model: ChatModel, cells: Sequence[Sequence[Any]], base: Sequence[Any] = (), *, reuse: bool = True
) -> tuple[CellPlan, Hooks, list[Hooks], list[_Chain]]:
    """Every cell's hooks (building them validates every cell before any forward), its first
    layer and the chains it runs in."""
    n_layers = int(model.cfg.n_layers)
    base_hooks = hooks_of(model, base)
    cell_hooks = [hooks_of(model, cell) for cell in cells]
    base_ok = all(layer_of_hook(name) is not None for name, _ in base_hooks)
    can = reuse and base_ok and not missing_needs(model, ["replay"])
    keys = [_keys_of(model, cell) if can else None for cell in cells]
    firsts: list[int | None] = []
    for hooks in cell_hooks:
        layers = [layer_of_hook(name) for name, _ in hooks]
        firsts.append(n_layers if not hooks else None if not can or None in layers else min(layers))  # type: ignore[type-var]
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(firsts):
        if k is not None and k < n_layers:
            groups.setdefault(k, []).append(i)
    chains = [ch for k in sorted(groups) for ch in _chains(groups[k], keys, k)]
    starts = [n_layers if k is None else k for k in firsts]
    for ch in chains:
        for x, members in ch.exits.items():
            for i in members:
                starts[i] = x
    full = [k is None for k in firsts]
    starts = [0 if f else s for s, f in zip(starts, full)]
    return CellPlan(tuple(starts), tuple(full), n_layers), base_hooks, cell_hooks, chains


class _Counter:
    def __init__(self) -> None:
        self.calls: dict[int, int] = {}
        self.names: list[str] = []

    def wrap(self, name: str, fn: Callable) -> Callable:
        i = len(self.names)
        self.names.append(name)

        def counted(x: Tensor, hook: Any) -> Tensor:
            self.calls[i] = self.calls.get(i, 0) + 1
            return fn(x, hook)

        return counted

    def check(self, what: str) -> None:
        missing = sorted({n for i, n in enumerate(self.names) if i not in self.calls})
        if missing:
            raise HookNotFiredError(
                f"intervention hooks {missing} never fired while {what}; "
                "check that the layers exist in this model's forward."
            )


def _sliced(per_copy: list[list[Callable]], batch: int) -> Callable:
    """One hook for a tiled batch: copy c's hooks (in order) act on rows ``c*batch:(c+1)*batch``."""

    def hook(x: Tensor, hook: Any) -> Tensor:
        parts = []
        for c, fns in enumerate(per_copy):
            part = x[c * batch : (c + 1) * batch]
            for fn in fns:
                out = fn(part, hook)
                part = part if out is None else out
            parts.append(part)
        return torch.cat(parts, dim=0)

    return hook


def _tiled_hooks(per_copy_hooks: list[Hooks], batch: int, counter: _Counter) -> Hooks:
    by_name: dict[str, list[list[Callable]]] = {}
    for c, hooks in enumerate(per_copy_hooks):
        for name, fn in hooks:
            by_name.setdefault(name, [[] for _ in per_copy_hooks])[c].append(counter.wrap(name, fn))
    return [(name, _sliced(per_copy, batch)) for name, per_copy in by_name.items()]


def default_max_tokens(model: ChatModel) -> int:
    return CPU_TOKENS if model_device(model).type == "cpu" else ACCELERATOR_TOKENS


def cell_logprobs(
    model: ChatModel,
    prompts: Sequence[Any],
    cells: Sequence[Sequence[Any]],
    *,
    base: Sequence[Any] = (),
    batch_size: int = 32,
    max_tokens: int | None = None,
    reuse: bool = True,
    progress: bool = False,
    desc: str = "cells",
    on_cell: Callable[[int, Tensor, Tensor], None] | None = None,
    share: tuple[int, int] = (0, 1),
) -> tuple[Tensor, list[Tensor | None]]:
    """First-response-token log-probs ``[prompt, vocab]`` of the clean run (under ``base``) and of
    every cell (a list of interventions applied on top of ``base``), in prompt order.

    ``reuse=False`` runs one full forward per cell (the reference route). ``max_tokens``: the most
    tokens (rows x sequence) one tiled re-run may hold (default :func:`default_max_tokens`).
    ``on_cell(i, logprobs, clean)``: called as each cell completes (to checkpoint it); the
    returned list then holds None for every cell, so a large grid never holds more than one
    group of cells' log-probs at once. ``share=(rank, world)``: compute only this process's share
    of the chunks (every ``world``-th, from ``rank``), each exactly as a single process would;
    cells without interventions are the clean run and come to every process.
    """
    check_model(model)
    rank, world = share
    if not (0 <= rank < world):
        raise ConfigError(f"share must be (rank, world) with 0 <= rank < world, got {share!r}.")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ConfigError(f"max_tokens must be a positive integer (tokens per re-run batch), got {max_tokens!r}.")
    rendered = as_rendered(model, prompts)
    check_context(model, rendered)
    plan, base_hooks, cell_hooks, chains = plan_cells(model, cells, base, reuse=reuse)
    budget = max_tokens or default_max_tokens(model)
    n, L = len(rendered), plan.n_layers
    out: list[Tensor | None] = [None] * len(cells)
    batches = list(padded_batches(rendered, batch_size, model.tokenizer.pad_token_id))
    keep = {ch.start for ch in chains}
    bar = tqdm(total=len(cells), desc=desc, disable=not progress)

    clean: Tensor | None = None

    def finish(i: int, lp: Tensor) -> None:
        if on_cell is None:
            out[i] = lp
        else:
            on_cell(i, lp, clean)
        bar.update()

    try:
        clean, records = _clean_runs(model, batches, base_hooks, keep if chains else None, n, logprobs)
        for i, s in enumerate(plan.starts):
            if s == L:
                finish(i, clean.clone())
        chunks = _chunks(chains, plan, keep, batches, budget)
        for ci, chunk in enumerate(chunks):
            if ci % world != rank:
                continue  # another process's share
            if isinstance(chunk, int):
                finish(chunk, _full_cell(model, batches, base_hooks + cell_hooks[chunk], clean, logprobs))  # type: ignore[arg-type]
                continue
            k = chunk[0].start
            later_base = [(name, fn) for name, fn in base_hooks if layer_of_hook(name) >= k]  # type: ignore[operator]
            finals: dict[int, Tensor] = {}  # cell -> [n, d_model] last-position residual after the last block
            for bi, pb in enumerate(batches):
                _run_chains(model, records[bi], chunk, cell_hooks, base_hooks, later_base, pb, n, finals)
            done = sorted(finals)
            for c0 in range(0, len(done), max(1, HEAD_ROWS // n)):
                part = done[c0 : c0 + max(1, HEAD_ROWS // n)]
                with torch.no_grad():
                    logits = head_logits(model, torch.cat([finals.pop(i) for i in part], dim=0))
                for j, i in enumerate(part):
                    finish(i, logprobs(logits[j * n : (j + 1) * n]))
    finally:
        bar.close()
    return clean, out  # type: ignore[return-value]


def logprobs(logits: Tensor) -> Tensor:
    """Log-softmax of last-position logits, in float32 on the CPU (what every cell returns)."""
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def _clean_runs(
    model: ChatModel, batches: list, base_hooks: Hooks, keep: set[int] | None, n: int, logprobs: Callable
) -> tuple[Tensor, list]:
    """The clean prompts under the base interventions, once per padded batch: their first-token
    log-probs ``[n, vocab]`` and (``keep``: the first layers cells start from) each batch's record."""
    device = model_device(model)
    clean: Tensor | None = None
    records = []
    for pb in batches:
        counter = _Counter()
        hooks = [(name, counter.wrap(name, fn)) for name, fn in base_hooks]
        ids, mask = pb.input_ids.to(device), pb.attention_mask.to(device)
        with torch.no_grad(), prompt_layout(pb.attention_mask):
            if keep:
                rec, logits = record_blocks(model, ids, hooks, attention_mask=mask, keep=keep)
                records.append(rec)
            else:
                with model.hooks(fwd_hooks=hooks):
                    logits = last_logits(model, ids, mask)
        counter.check("running the clean prompts")
        lp = logprobs(logits)
        clean = torch.empty((n, lp.shape[-1]), dtype=torch.float32) if clean is None else clean
        clean[pb.indices] = lp
    return clean, records  # type: ignore[return-value]


def _chunks(
    chains: list[_Chain], plan: CellPlan, keep: set[int], batches: list, budget: int
) -> list[list[_Chain] | int]:
    """Fixed chunks (the same for every batch and every process): a chunk's chains of one first layer
    and shape run side by side in every batch, then its last positions are unembedded together;
    cells that need a full forward come last, one each."""
    widest = max((len(pb.indices) * int(pb.input_ids.shape[1]) for pb in batches), default=1)
    per = max(1, budget // widest)
    chunks: list[list[_Chain] | int] = []
    for k in sorted(keep):
        shapes: dict[tuple, list[_Chain]] = {}
        for ch in chains:
            if ch.start == k:
                shapes.setdefault(ch.shape(), []).append(ch)
        chunks += [same[c0 : c0 + per] for same in shapes.values() for c0 in range(0, len(same), per)]
    return chunks + [i for i, f in enumerate(plan.full) if f]


def _full_cell(model: ChatModel, batches: list, hooks_in: Hooks, like: Tensor, logprobs: Callable) -> Tensor:
    """One cell as a whole forward per batch (no reuse possible)."""
    device = model_device(model)
    out = torch.empty_like(like)
    for pb in batches:
        counter = _Counter()
        hooks = [(name, counter.wrap(name, fn)) for name, fn in hooks_in]
        with torch.no_grad(), prompt_layout(pb.attention_mask), model.hooks(fwd_hooks=hooks):
            logits = last_logits(model, pb.input_ids.to(device), pb.attention_mask.to(device))
        counter.check("running a cell")
        out[pb.indices] = logprobs(logits)
    return out


def _run_chains(
    model: ChatModel,
    rec: Any,
    chains: list[_Chain],
    cell_hooks: list[Hooks],
    base_hooks: Hooks,
    later_base: Hooks,
    pb: Any,
    n: int,
    finals: dict[int, Tensor],
) -> None:
    """Chains of one shape on one recorded batch, tiled chain-major into one re-run, then each exit
    layer's nested cells from the head runs' inputs to that block."""
    b, copies, k = len(pb.indices), len(chains), chains[0].start
    exits = chains[0].shape()
    device = rec.inputs[k].device

    def put(i: int, x: Tensor) -> None:
        if i not in finals:
            finals[i] = torch.empty((n, x.shape[-1]), dtype=x.dtype, device=device)
        finals[i][pb.indices] = x

    counter = _Counter()
    hooks = _tiled_hooks([[*later_base, *cell_hooks[ch.head]] for ch in chains], b, counter)
    snapshots: dict[int, Tensor | None] = {x: None for x in exits}
    hidden = rec.inputs[k].repeat(copies, *([1] * (rec.inputs[k].ndim - 1)))
    with torch.no_grad(), prompt_layout(pb.attention_mask):
        x = run_blocks(model, rec, k, hidden, hooks, snapshots=snapshots)
    counter.check("re-running blocks")
    for c, ch in enumerate(chains):
        for i in [ch.head, *ch.twins]:
            put(i, x[c * b : (c + 1) * b, -1])
    for at in exits:
        counter = _Counter()
        hooks = _tiled_hooks(
            [[(name, fn) for name, fn in base_hooks if layer_of_hook(name) >= at] for _ in chains], b, counter
        )  # type: ignore[operator]
        with torch.no_grad(), prompt_layout(pb.attention_mask):
            x = run_blocks(model, rec, at, snapshots[at], hooks)
        counter.check("re-running blocks after a nested window")
        for c, ch in enumerate(chains):
            for i in ch.exits[at]:
                put(i, x[c * b : (c + 1) * b, -1])
