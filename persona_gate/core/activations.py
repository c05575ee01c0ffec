"""Collect residual-stream activations: batched, padding-correct, and no more model than needed.

Prompts are rendered with the chat template, sorted by length (less padding), left-padded and
run in batches. A forward hook at each requested site reduces the ``[batch, seq, d_model]``
activation *at once* to one vector per prompt and position selector (a weighted sum whose weights
are 0 on pads, see :mod:`persona_gate.prompts.positions`), so nothing of size ``seq`` is kept. After the
last requested site has fired the forward is aborted: later blocks, the final norm and the
unembedding (three quarters of a forward on a 262k-vocabulary model) are never run.

Two consumers share :func:`iter_activations`:

* :func:`cache_activations` keeps every prompt's vectors (an :class:`ActivationStore`,
  ``acts[sample, site, d_model]`` float32 on CPU) for projections and plots;
* :class:`persona_gate.core.directions.DirectionFitter` keeps only float64 running sums per group,
  so memory does not grow with the number of prompts.

Faults: a batch that runs out of memory (``torch.OutOfMemoryError``, or the CPU allocator's
``RuntimeError``) is retried at half the size, down to one prompt, then stops with a
:class:`~persona_gate.errors.MemoryExhaustedError` (:func:`run_batches`; the grid engine and
generation use the same helpers). The prompts already done are kept; the reduced size goes into
the model's provenance (``provenance["batch_size_used"]``). A non-finite activation (float16
overflows in Gemma's residual stream) stops the run naming the layer, the hook site and the dtype.

Example::

    store = cache_activations(model, prompts, sites_for(model), position="mean:system")
    store.acts.shape        # (n_prompts, n_layers, d_model)
    store.group_mean("compliant")
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import (
    ConfigError,
    EmptyGroupError,
    MemoryExhaustedError,
    NonFiniteError,
    PositionError,
    UnknownHookSiteError,
)
from ..models.loading import model_device, model_info, note_batch_size
from ..models.protocol import ChatModel
from ..prompts.chat import RenderedPrompt, render_all
from ..prompts.positions import Position, parse_position, weights
from ..prompts.sets import ChatPrompt
from ..sites import HookSite, parse_site, resolve
from .readout import read_batch

log = logging.getLogger(__name__)
T = TypeVar("T")
OOM_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")
LOW_PRECISION = (torch.float16, torch.bfloat16)


@runtime_checkable
class Tokens(Protocol):
    """Anything tokenized: a rendered prompt or a rendered conversation."""

    input_ids: tuple[int, ...]

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Batch:
    """One batch's reduced activations: ``acts[position, batch, site, d_model]`` (float32, CPU)."""

    indices: list[int]
    acts: Float[Tensor, "pos batch site d_model"]


def as_rendered(model: ChatModel, prompts: Sequence[ChatPrompt | RenderedPrompt | str]) -> list[RenderedPrompt]:
    from ..models.loading import check_model

    check_model(model)
    if isinstance(prompts, (str, ChatPrompt, RenderedPrompt)):
        raise PositionError(f"pass a list of prompts, not one {type(prompts).__name__}; wrap it: [prompt].")
    if not prompts:
        raise EmptyGroupError("no prompts were given; pass at least one prompt.")
    if any(isinstance(p, str) for p in prompts):
        if not all(isinstance(p, str) for p in prompts):
            raise PositionError(
                "pass either strings (user messages) or prompts, not a mix; wrap each string in ChatPrompt."
            )
        # A plain string is one user message without a system prompt.
        prompts = [
            ChatPrompt(system=None, user=p, group="user", request_id=f"user-{i:03d}") for i, p in enumerate(prompts)
        ]
    if all(isinstance(p, RenderedPrompt) for p in prompts):
        return list(prompts)  # type: ignore[arg-type]
    if any(isinstance(p, RenderedPrompt) for p in prompts):
        raise PositionError("pass either ChatPrompts or RenderedPrompts, not a mix; render all of them or none.")
    return render_all(model.tokenizer, prompts)  # type: ignore[arg-type]


def normalise_sites(model: ChatModel, sites: Sequence[HookSite | str]) -> list[HookSite]:
    out = [parse_site(s) if isinstance(s, str) else s for s in sites]
    if not out:
        raise UnknownHookSiteError("no hook sites were given; pass e.g. sites_for(model).")
    if len(set(out)) != len(out):
        raise UnknownHookSiteError("hook sites are repeated; pass each site once.")
    for s in out:
        resolve(s, model)
    return out


def check_context(model: ChatModel, rendered: Sequence[Tokens]) -> None:
    n_ctx = getattr(model.cfg, "n_ctx", None)
    longest = max(len(r) for r in rendered)
    if n_ctx and longest > n_ctx:
        raise PositionError(
            f"a prompt has {longest} tokens but the model's context is {n_ctx}; shorten or drop the longest prompts."
        )


@dataclass(frozen=True)
class PaddedBatch:
    """Left-padded token ids of one length-sorted batch; ``offsets[b]`` = pads before row b."""

    indices: list[int]
    input_ids: Tensor
    attention_mask: Tensor
    offsets: list[int]


def padded_batches(rendered: Sequence[Tokens], batch_size: int, pad_id: int) -> Iterator[PaddedBatch]:
    """Batches of similar length (longest first, so memory peaks at once), left-padded.

    Left padding puts every prompt's last token at index -1; the bridge derives position ids
    from the attention mask, so padded rows equal unpadded ones (tested).
    """
    _check_batch_size(batch_size)
    order = length_order(rendered)
    for start in range(0, len(order), batch_size):
        yield pad_batch(rendered, order[start : start + batch_size], pad_id)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}; pass a positive batch size.")


def length_order(rendered: Sequence[Tokens]) -> list[int]:
    """Prompt indices longest first (the order of :func:`padded_batches`)."""
    return sorted(range(len(rendered)), key=lambda i: -len(rendered[i]))


def pad_batch(rendered: Sequence[Tokens], idx: list[int], pad_id: int) -> PaddedBatch:
    """The prompts ``idx`` left-padded to the longest of them."""
    L = max(len(rendered[i]) for i in idx)
    ids = torch.full((len(idx), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), L), dtype=torch.long)
    offsets = []
    for b, i in enumerate(idx):
        n = len(rendered[i])
        ids[b, L - n :] = torch.tensor(rendered[i].input_ids)
        mask[b, L - n :] = 1
        offsets.append(L - n)
    return PaddedBatch(indices=idx, input_ids=ids, attention_mask=mask, offsets=offsets)


# ---------------------------------------------------------------- out of memory: halve and retry


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: ``torch.OutOfMemoryError`` (CUDA) or the CPU allocator's ``RuntimeError``."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MESSAGES)


class BatchTooLarge(Exception):
    """Internal: a guarded forward of ``rows`` rows (``copies`` cells side by side; ``part``: which
    part of a runner) ran out of memory; its runner halves what made it large."""

    def __init__(self, rows: int, copies: int = 1, part: str = "batch") -> None:
        super().__init__(f"out of memory in a forward of {rows} rows ({part})")
        self.rows, self.copies, self.part = rows, copies, part


@contextmanager
def memory_guard(rows: int, copies: int = 1, part: str = "batch") -> Iterator[None]:
    """Turn a failed allocation inside into :class:`BatchTooLarge` (``rows``: the forward's batch).

    Only a runner's own forwards are guarded: an out-of-memory raised anywhere else (a caller, a
    callback) propagates unchanged, as does every other exception."""
    try:
        yield
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        raise BatchTooLarge(rows, copies, part) from exc


def out_of_memory_error(model: ChatModel, what: str, detail: str) -> MemoryExhaustedError:
    """The one-line error once even a batch of one runs out of memory."""
    info = model_info(model)
    return MemoryExhaustedError(
        f"out of memory in {what} even at batch size 1 ({detail}; {info.dtype} on {model_device(model)}); "
        "load the model in a smaller dtype (--dtype bfloat16), spread it over devices (device_map='auto'), "
        "or pass fewer or shorter prompts."
    )


def free_memory() -> None:
    """Release a failed forward's memory before a retry."""
    gc.collect()  # the failed forward's frames hold its tensors (a reference cycle through the traceback)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def halve_batch(model: ChatModel, what: str, rows: int, key: str | None = None, unit: str = "prompts per batch") -> int:
    """The size to retry with after a forward of ``rows`` rows ran out of memory: half of it
    (logged, noted in the model's provenance under ``key``), once the failed forward's memory is freed."""
    size = max(1, rows // 2)
    log.warning("out of memory in %s at %d %s; retrying what is not finished at %d", what, rows, unit, size)
    free_memory()
    if key is not None:
        note_batch_size(model, key, size)
    return size


def run_batches(
    model: ChatModel,
    rendered: Sequence[Tokens],
    batch_size: int,
    step: Callable[[PaddedBatch], T],
    *,
    what: str,
    key: str,
) -> Iterator[tuple[PaddedBatch, T]]:
    """``step(batch)`` over the :func:`padded_batches` of ``rendered``, yielding each batch and its result
    as it succeeds. A batch that runs out of memory is retried at half its size (the remaining prompts
    re-batched from there: the batches a run at that size would have had), down to one prompt, then
    :class:`~persona_gate.errors.MemoryExhaustedError`. ``key``: the runner's name in provenance."""
    _check_batch_size(batch_size)
    order, pad_id = length_order(rendered), model.tokenizer.pad_token_id
    start, size = 0, batch_size
    while start < len(order):
        pb = pad_batch(rendered, order[start : start + size], pad_id)
        try:
            with memory_guard(len(pb.indices)):
                result = step(pb)
        except BatchTooLarge as e:
            if e.rows <= 1:
                raise out_of_memory_error(model, what, f"a prompt of {pb.input_ids.shape[1]} tokens") from e.__cause__
            rows = e.rows
        else:
            yield pb, result
            start += len(pb.indices)
            continue
        size = halve_batch(model, what, rows, key)


# ---------------------------------------------------------------- non-finite values


def is_low_precision(model: ChatModel) -> bool:
    """Whether the model computes in float16 / bfloat16 (where the non-finite checks run)."""
    return getattr(model.cfg, "dtype", torch.float32) in LOW_PRECISION


def non_finite_error(model: ChatModel, where: str, what: str) -> NonFiniteError:
    """The error naming the first non-finite ``where`` (layer and hook site), the computation and the dtype."""
    return NonFiniteError(
        f"non-finite activations (NaN/inf) {where} while {what}, in {model_info(model).dtype}: the model "
        "overflowed (float16 overflows in Gemma's residual stream). Load it in float32 (dtype='float32', "
        "--dtype float32) or bfloat16, or check the weights."
    )


def iter_activations(
    model: ChatModel,
    prompts: Sequence[ChatPrompt | RenderedPrompt | str],
    sites: Sequence[HookSite | str],
    positions: Sequence[Position | str] = ("last",),
    *,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "caching",
) -> Iterator[Batch]:
    """Yield reduced activations batch by batch (prompt order is restored by ``indices``)."""
    rendered = as_rendered(model, prompts)
    site_list = normalise_sites(model, sites)
    pos_list = [parse_position(p) for p in positions]
    if not pos_list:
        raise PositionError("no positions were given; pass e.g. ['last'].")
    check_context(model, rendered)
    # Selector weights are computed up front so a bad selector fails before any forward.
    all_weights = [[weights(p, r) for p in pos_list] for r in rendered]

    device = model_device(model)

    def step(pb: PaddedBatch) -> Tensor:
        idx = pb.indices
        W = torch.zeros((len(idx), len(pos_list), pb.input_ids.shape[1]), dtype=torch.float32)
        # One indexed write per batch: per-element tensor writes cost more than the forward
        # on small models.
        coords = [
            (b, p, pb.offsets[b] + t, v)
            for b, i in enumerate(idx)
            for p, w in enumerate(all_weights[i])
            for t, v in w.items()
        ]
        b_i, p_i, t_i, vals = zip(*coords)
        W[list(b_i), list(p_i), list(t_i)] = torch.tensor(vals, dtype=torch.float32)
        return read_batch(model, pb.input_ids, pb.attention_mask, W.to(device), site_list).transpose(0, 1)

    bar = tqdm(total=len(rendered), desc=desc, unit="prompt", disable=not progress)
    try:
        for pb, out in run_batches(model, rendered, batch_size, step, what="caching activations", key="caching"):
            if not torch.isfinite(out).all():
                bad = min((s for k, s in enumerate(site_list) if not torch.isfinite(out[:, :, k]).all()))
                where = f"first at layer {bad.layer} (hook site {bad.hook_name})"
                raise non_finite_error(model, where, "caching activations")
            bar.update(len(pb.indices))
            yield Batch(indices=pb.indices, acts=out)
    finally:
        bar.close()


@dataclass(frozen=True)
class ActivationStore:
    """Per-prompt activations at one position selector: ``acts[sample, site, d_model]``."""

    acts: Float[Tensor, "sample site d_model"]
    sites: tuple[HookSite, ...]
    groups: tuple[str, ...]
    position: str
    request_ids: tuple[str, ...] = ()
    persona_ids: tuple[str, ...] = ()
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.acts.ndim != 3 or self.acts.shape[0] != len(self.groups) or self.acts.shape[1] != len(self.sites):
            raise ValueError(
                f"acts of shape {tuple(self.acts.shape)} do not match {len(self.groups)} samples x "
                f"{len(self.sites)} sites."
            )

    @property
    def d_model(self) -> int:
        return int(self.acts.shape[-1])

    def site_index(self, site: HookSite | str) -> int:
        s = parse_site(site) if isinstance(site, str) else site
        try:
            return self.sites.index(s)
        except ValueError:
            raise UnknownHookSiteError(
                f"{s} is not in this store; it holds {', '.join(map(str, self.sites))}."
            ) from None

    def at(self, site: HookSite | str) -> Float[Tensor, "sample d_model"]:
        return self.acts[:, self.site_index(site)]

    def select(self, group: str) -> Float[Tensor, "n site d_model"]:
        mask = torch.tensor([g == group for g in self.groups])
        if not mask.any():
            raise EmptyGroupError(f"no sample in group {group!r}; groups are {sorted(set(self.groups))}.")
        return self.acts[mask]

    def group_mean(self, group: str) -> Float[Tensor, "site d_model"]:
        return self.select(group).double().mean(0)

    def save(self, path: str | Path) -> Path:
        """One safetensors key per site, so a single layer can be read alone."""
        from ..io import save_artefact

        tensors = {f"acts/{s}": self.acts[:, i].contiguous() for i, s in enumerate(self.sites)}
        manifest = {
            "sites": [str(s) for s in self.sites],
            "groups": list(self.groups),
            "position": self.position,
            "request_ids": list(self.request_ids),
            "persona_ids": list(self.persona_ids),
            "provenance": self.provenance,
        }
        return save_artefact(path, "activation_store", tensors, manifest)

    @classmethod
    def load(cls, path: str | Path) -> ActivationStore:
        from ..io import load_artefact

        m, t = load_artefact(path, "activation_store")
        sites = tuple(parse_site(s) for s in m["sites"])
        return cls(
            acts=torch.stack([t[f"acts/{s}"] for s in sites], dim=1),
            sites=sites,
            groups=tuple(m["groups"]),
            position=m["position"],
            request_ids=tuple(m["request_ids"]),
            persona_ids=tuple(m["persona_ids"]),
            provenance=m["provenance"],
        )


def cache_activations(
    model: ChatModel,
    prompts: Sequence[ChatPrompt | RenderedPrompt | str],
    sites: Sequence[HookSite | str],
    position: Position | str = "last",
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> ActivationStore:
    """Keep every prompt's activation at ``position`` for each site (float32, CPU)."""
    from ..models.loading import provenance

    rendered = as_rendered(model, prompts)
    site_list = normalise_sites(model, sites)
    acts = torch.empty((len(rendered), len(site_list), model.cfg.d_model), dtype=torch.float32)
    for batch in iter_activations(model, rendered, site_list, [position], batch_size=batch_size, progress=progress):
        acts[batch.indices] = batch.acts[0]
    return ActivationStore(
        acts=acts,
        sites=tuple(site_list),
        groups=tuple(r.group for r in rendered),
        position=str(parse_position(position)),
        request_ids=tuple(r.prompt.request_id for r in rendered),
        persona_ids=tuple(r.prompt.persona_id for r in rendered),
        provenance=provenance(model),
    )
