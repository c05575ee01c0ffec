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

from ..core.activations import (
    BatchTooLarge,
    as_rendered,
    check_context,
    halve_batch,
    is_low_precision,
    memory_guard,
    non_finite_error,
    out_of_memory_error,
    padded_batches,
)
from ..core.prompt_layout import prompt_layout
from ..errors import ConfigError, HookNotFiredError, NonFiniteError
from ..models.adapter import head_logits, last_logits, missing_needs, record_blocks, run_blocks
from ..models.loading import check_model, model_device, note_batch_size
from ..models.protocol import ChatModel
from ..sites import HookSite, layer_of_hook, resolve

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

    Out of memory in one of its forwards: the unfinished cells are run again with half the batch
    (a failed clean run or single re-run) or half the cells side by side (a failed tiled re-run,
    ``max_tokens`` shrinks), down to one row, then :class:`~persona_gate.errors.MemoryExhaustedError`.
    Finished cells are never run or reported again; the sizes reached go into the model's
    provenance (``batch_size_used``: ``grid``, ``grid_max_tokens``). In float16 / bfloat16 a
    non-finite logit stops the run with a :class:`~persona_gate.errors.NonFiniteError` naming the
    first non-finite layer.
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
    bar = tqdm(total=len(cells), desc=desc, disable=not progress)
    run = _Run(model, rendered, plan, base_hooks, cell_hooks, chains, on_cell, share, bar)
    try:
        run.until_done(batch_size, max_tokens or default_max_tokens(model))
    finally:
        bar.close()
    return run.clean, run.out  # type: ignore[return-value]


def _members(chunk: list[_Chain] | int) -> list[int]:
    if isinstance(chunk, int):
        return [chunk]
    return [i for ch in chunk for i in (ch.head, *ch.twins, *(j for m in ch.exits.values() for j in m))]


class _Run:
    """One :func:`cell_logprobs` call: the cells finished so far, tried again at smaller sizes after
    an out-of-memory (only the unfinished cells of this process's share)."""

    def __init__(self, model, rendered, plan, base_hooks, cell_hooks, chains, on_cell, share, bar) -> None:
        self.model, self.rendered, self.plan, self.bar = model, rendered, plan, bar
        self.base_hooks, self.cell_hooks, self.chains = base_hooks, cell_hooks, chains
        self.on_cell, (self.rank, self.world) = on_cell, share
        self.out: list[Tensor | None] = [None] * len(cell_hooks)
        self.done: set[int] = set()
        self.owned: set[int] = set()
        self.clean: Tensor | None = None
        self.low = is_low_precision(model)
        self.widest = 1

    def finish(self, i: int, lp: Tensor) -> None:
        if i in self.done:
            return  # finished before a retry: never reported twice
        self.done.add(i)
        if self.on_cell is None:
            self.out[i] = lp
        else:
            self.on_cell(i, lp, self.clean)
        self.bar.update()

    def until_done(self, size: int, budget: int) -> None:
        """Tries at ``size``/``budget``, halving what ran out of memory, until every cell is done."""
        pad = self.model.tokenizer.pad_token_id
        first = list(padded_batches(self.rendered, size, pad))  # tokens only: who owns which cells
        chunks = _chunks(self.chains, self.plan, {ch.start for ch in self.chains}, first, budget)
        self.owned = {i for ci, c in enumerate(chunks) if ci % self.world == self.rank for i in _members(c)}
        head, tries = HEAD_ROWS, 0
        while True:
            try:
                self.attempt(size, budget, head, retry=tries > 0)
                return
            except BatchTooLarge as e:
                fail = (e.rows, e.copies, e.part)
                if e.rows <= 1 or (e.part == "unembedding" and e.copies <= 1):
                    detail = f"{e.part} of {e.rows} row(s), {len(self.rendered)} prompts"
                    raise out_of_memory_error(self.model, "grid scoring", detail) from e.__cause__
            size, budget, head = self.smaller(fail, size, budget, head)
            tries += 1

    def smaller(self, fail: tuple[int, int, str], size: int, budget: int, head: int) -> tuple[int, int, int]:
        """Half of what made the failed forward large."""
        rows, copies, part = fail
        what, n = "grid scoring", len(self.rendered)
        if part == "unembedding":
            head = halve_batch(self.model, what, copies, unit="cells per unembedding") * n
        elif copies > 1:
            budget = halve_batch(self.model, what, copies, unit="cells side by side") * self.widest
            note_batch_size(self.model, "grid_max_tokens", budget)
        else:
            size = halve_batch(self.model, what, min(size, rows), "grid")
        return size, budget, head

    def left(self) -> list[_Chain]:
        """This process's chains with an unfinished cell, finished nested cells and twins dropped."""
        out = []
        for ch in self.chains:
            if ch.head not in self.owned:
                continue
            twins = [i for i in ch.twins if i not in self.done]
            exits = {x: m for x, ms in ch.exits.items() if (m := [i for i in ms if i not in self.done])}
            if ch.head not in self.done or twins or exits:
                out.append(_Chain(ch.head, ch.start, ch.keys, exits, twins))
        return out

    def attempt(self, size: int, budget: int, head: int, *, retry: bool) -> None:
        model, plan, n = self.model, self.plan, len(self.rendered)
        batches = list(padded_batches(self.rendered, size, model.tokenizer.pad_token_id))
        self.widest = max(len(pb.indices) * int(pb.input_ids.shape[1]) for pb in batches)
        chains = self.left() if retry else self.chains
        keep = {ch.start for ch in chains}
        self.clean, records = _clean_runs(
            model, batches, self.base_hooks, keep if chains else None, n, logprobs, self.low
        )
        for i, s in enumerate(plan.starts):
            if s == plan.n_layers:
                self.finish(i, self.clean.clone())
        chunks = _chunks(chains, plan, keep, batches, budget)
        if not retry:
            chunks = [c for ci, c in enumerate(chunks) if ci % self.world == self.rank]
        for chunk in chunks:
            if isinstance(chunk, int):
                if chunk in self.owned and chunk not in self.done:
                    hooks = self.base_hooks + self.cell_hooks[chunk]
                    self.finish(chunk, _full_cell(model, batches, hooks, self.clean, logprobs, self.low))
                continue
            k = chunk[0].start
            later_base = [(name, fn) for name, fn in self.base_hooks if layer_of_hook(name) >= k]  # type: ignore[operator]
            finals: dict[int, Tensor] = {}  # cell -> [n, d_model] last-position residual after the last block
            for bi, pb in enumerate(batches):
                _run_chains(model, records[bi], chunk, self.cell_hooks, self.base_hooks, later_base, pb, n, finals)
            self.unembed(finals, head, batches)

    def unembed(self, finals: dict[int, Tensor], head: int, batches: list) -> None:
        """The last positions of a chunk's cells, unembedded ``head`` rows at a time."""
        n = len(self.rendered)
        done = sorted(finals)
        step = max(1, head // n)
        for c0 in range(0, len(done), step):
            part = done[c0 : c0 + step]
            with torch.no_grad(), memory_guard(len(part) * n, len(part), "unembedding"):
                logits = head_logits(self.model, torch.cat([finals.pop(i) for i in part], dim=0))
            for j, i in enumerate(part):
                lp = logits[j * n : (j + 1) * n]
                if self.low and not torch.isfinite(lp).all():
                    hooks = self.base_hooks + self.cell_hooks[i]
                    raise non_finite(self.model, batches, hooks, f"scoring grid cell {i}")
                self.finish(i, logprobs(lp))


def logprobs(logits: Tensor) -> Tensor:
    """Log-softmax of last-position logits, in float32 on the CPU (what every cell returns)."""
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def _clean_runs(
    model: ChatModel,
    batches: list,
    base_hooks: Hooks,
    keep: set[int] | None,
    n: int,
    logprobs: Callable,
    low: bool = False,
) -> tuple[Tensor, list]:
    """The clean prompts under the base interventions, once per padded batch: their first-token
    log-probs ``[n, vocab]`` and (``keep``: the first layers cells start from) each batch's record.
    ``low``: a float16 / bfloat16 model, whose logits are checked for NaN/inf."""
    device = model_device(model)
    clean: Tensor | None = None
    records = []
    for pb in batches:
        counter = _Counter()
        hooks = [(name, counter.wrap(name, fn)) for name, fn in base_hooks]
        ids, mask = pb.input_ids.to(device), pb.attention_mask.to(device)
        with torch.no_grad(), prompt_layout(pb.attention_mask), memory_guard(len(pb.indices)):
            if keep:
                rec, logits = record_blocks(model, ids, hooks, attention_mask=mask, keep=keep)
                records.append(rec)
            else:
                with model.hooks(fwd_hooks=hooks):
                    logits = last_logits(model, ids, mask)
        counter.check("running the clean prompts")
        if low and not torch.isfinite(logits).all():
            raise non_finite(model, [pb], base_hooks, "scoring the clean prompts")
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


def _full_cell(
    model: ChatModel, batches: list, hooks_in: Hooks, like: Tensor, logprobs: Callable, low: bool = False
) -> Tensor:
    """One cell as a whole forward per batch (no reuse possible)."""
    device = model_device(model)
    out = torch.empty_like(like)
    for pb in batches:
        counter = _Counter()
        hooks = [(name, counter.wrap(name, fn)) for name, fn in hooks_in]
        with torch.no_grad(), prompt_layout(pb.attention_mask), memory_guard(len(pb.indices)):
            with model.hooks(fwd_hooks=hooks):
                logits = last_logits(model, pb.input_ids.to(device), pb.attention_mask.to(device))
        counter.check("running a cell")
        if low and not torch.isfinite(logits).all():
            raise non_finite(model, [pb], hooks_in, "scoring a grid cell")
        out[pb.indices] = logprobs(logits)
    return out


def non_finite(model: ChatModel, batches: list, hooks: Hooks, what: str) -> NonFiniteError:
    """The error for non-finite logits: a diagnostic forward (only after the failure) under the same
    hooks finds the first block whose output holds NaN/inf at a real (not pad) token."""
    device = model_device(model)
    names = [resolve(HookSite(layer, "resid_post"), model) for layer in range(int(model.cfg.n_layers))]
    for pb in batches:
        real = pb.attention_mask.to(device).bool()
        bad: list[int] = []

        def probe(layer: int) -> Callable:
            def fn(x: Tensor, hook: Any) -> None:
                if not torch.isfinite(x[real]).all():
                    bad.append(layer)

            return fn

        probes = [(name, probe(layer)) for layer, name in enumerate(names)]
        with torch.no_grad(), prompt_layout(pb.attention_mask), model.hooks(fwd_hooks=[*hooks, *probes]):
            last_logits(model, pb.input_ids.to(device), pb.attention_mask.to(device))
        if bad:
            layer = min(bad)
            return non_finite_error(model, f"first at layer {layer} (hook site {names[layer]})", what)
    return non_finite_error(model, "in the logits, after the last block (the final norm or the unembedding)", what)


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
    with torch.no_grad(), prompt_layout(pb.attention_mask), memory_guard(copies * b, copies, "re-run"):
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
        with torch.no_grad(), prompt_layout(pb.attention_mask), memory_guard(copies * b, copies, "re-run"):
            x = run_blocks(model, rec, at, snapshots[at], hooks)
        counter.check("re-running blocks after a nested window")
        for c, ch in enumerate(chains):
            for i in ch.exits[at]:
                put(i, x[c * b : (c + 1) * b, -1])
