"""Activation patching: at which layers and positions does the persona gate refusal?

A *source* prompt (safe persona + harmful request: refuses) and a *target* prompt (compliant
persona + the same request: complies) are run clean; then the target is re-run with the
source's activation copied in at one site (layer, kind) and one position slot at a time
(*denoising*; ``mode="noising"`` swaps the roles). The metric is the refusal log-odds of the
first response token, normalised

    restoration = (m_patched - m_target) / (m_source - m_target)

so 0 = the unpatched target and 1 = the source, in both modes.

Positions. Persona prompts differ in length, so positions are aligned by role: the template
tokens before the system prompt (from the start), the system prompt as **one block**, the
template tokens between system and user, the user's request as one block, and the
post-instruction tokens (from the end). A block of equal length in both prompts is copied token
by token; a block of different lengths (the system prompt) is patched by shifting the target
block's mean to the source block's mean. Prompts of equal length are patched token by token
(``positions="tokens"``). The slot ``[all]`` patches every slot at once. Every slot is labelled
with its token text.

Speed. The unchanged prefix is never recomputed: the clean target run records each block's
input and call arguments (mask, rotary embeddings), and a patch at layer ``k`` re-runs only
blocks ``k..L-1`` -- for every slot of one layer in one batch -- and unembeds only the last
position. Metrics stay on the device until the end. ``direction=`` patches only the component
along a direction at each layer. :func:`attribution_patching` approximates the whole map from
one forward and one backward per pair.

What it can and cannot say. Residual-stream patching at ``resid_pre`` cannot localise where the
persona is *read*: a patch at layer ``k`` replaces everything the target's residual holds at the
patched positions, so once the persona has reached a position (the system block early, the last
token once an earlier block has moved it there), patching that position restores refusal at every
layer up to the read *and after it* -- the per-layer maximum is high at every layer. On the
planted gate (:mod:`persona_gate.organism.planted`, gate at layers 4-5) it restores 1.0 at every
layer. Patching only the component along the persona direction (``direction=``) restores where
that direction carries the persona into the read: exactly the planted layers there. The gate
window (:func:`persona_gate.experiments.verdicts.gate_window`) keeps both as labelled evidence.

Example::

    result = activation_patching(model, source_prompts, target_prompts, scorer.token_ids)
    result.mean("example")["restoration"]       # [layer, position]
    gate_layers(result)                          # layers whose restoration exceeds 0.5
    gate_layers(activation_patching(model, source_prompts, target_prompts, scorer.token_ids, direction=persona))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.directions import DirectionSet
from ..errors import PositionError
from ..grid import Computed, Cost, GridSpec, open_store, run_grid
from ..grid.replay import Replay
from ..models.adapter import check_supported, last_logits, unembedded_rows
from ..models.loading import model_device, provenance
from ..models.protocol import ChatModel
from ..prompts.chat import RenderedPrompt, render_all
from ..prompts.sets import ChatPrompt
from ..results import LabelledResult
from ..scoring.metrics import refusal_logodds
from ..scoring.stats import mean_interval
from ..sites import HookSite, resolve, sites_for


@dataclass(frozen=True)
class Slot:
    """One patchable position: token indices in the source and in the target, and a label."""

    label: str
    source: tuple[int, ...]
    target: tuple[int, ...]

    @property
    def tokenwise(self) -> bool:
        return len(self.source) == len(self.target)


def _tok(tokenizer: Any, token_id: int) -> str:
    return repr(tokenizer.decode([token_id]))[1:-1]


def align(tokenizer: Any, source: RenderedPrompt, target: RenderedPrompt, positions: str = "auto") -> list[Slot]:
    """Position slots shared by a source and a target prompt (see the module docstring)."""
    if positions not in ("auto", "tokens", "roles"):
        raise PositionError(f"unknown positions {positions!r}; use auto, tokens or roles.")
    tgt = target.input_ids
    if positions == "tokens" or (positions == "auto" and len(source) == len(target)):
        if len(source) != len(target):
            raise PositionError(
                f"token-by-token patching needs prompts of equal length ({len(source)} vs {len(target)}); "
                "use positions='roles' to align by role."
            )
        slots = [Slot(f"{i} {_tok(tokenizer, t)}", (i,), (i,)) for i, t in enumerate(tgt)]
    else:
        if (source.system is None) != (target.system is None):
            raise PositionError(
                "one prompt has a system prompt and the other has none; give both a persona "
                "(positions cannot be aligned otherwise)."
            )
        tail_s, tail_t = len(source) - source.user[0], len(target) - target.user[0]
        if tail_s != tail_t or source.user[1] - source.user[0] != target.user[1] - target.user[0]:
            raise PositionError(
                "source and target differ after the system prompt (different requests?); pair each "
                "request with itself under the two personas."
            )
        slots = []
        start_s = source.system[0] if source.system else source.user[0]
        start_t = target.system[0] if target.system else target.user[0]
        if start_s != start_t:
            raise PositionError(
                "the templates put different tokens before the system prompt; use the same model for both."
            )
        slots += [Slot(f"{_tok(tokenizer, tgt[i])} (start+{i})", (i,), (i,)) for i in range(start_t)]
        if target.system:
            slots.append(Slot("[system]", tuple(range(*source.system)), tuple(range(*target.system))))
            mid_s, mid_t = source.system[1], target.system[1]
            if source.user[0] - mid_s != target.user[0] - mid_t:
                raise PositionError("the template tokens between system and user differ in length; use one model.")
            for j in range(target.user[0] - mid_t):
                slots.append(Slot(f"{_tok(tokenizer, tgt[mid_t + j])} (sys+{j})", (mid_s + j,), (mid_t + j,)))
        slots.append(Slot("[user]", tuple(range(*source.user)), tuple(range(*target.user))))
        n_post = len(target) - target.user[1]
        for j in range(n_post):
            k = j - n_post
            slots.append(Slot(f"{_tok(tokenizer, tgt[len(target) + k])} ({k})", (len(source) + k,), (len(target) + k,)))
    every = Slot("[all]", tuple(i for s in slots for i in s.source), tuple(i for s in slots for i in s.target))
    return slots + [every]


def _patch_rows(x: Tensor, src: Tensor, slots: Sequence[Slot | None], direction: Tensor | None) -> Tensor:
    """Row r of ``x`` gets slot r of the source patched in (``x`` holds one copy per slot; None = leave)."""
    x = x.clone()
    for r, slot in enumerate(slots):
        if slot is None:  # the unpatched reference row
            continue
        if slot.label == "[all]" and not slot.tokenwise:
            for sub in slots[:-1]:  # [all] = every slot's own patch at once
                x[r] = _patch_rows(x[r : r + 1], src, [sub], direction)[0]
            continue
        if slot.tokenwise:
            delta = src[0, list(slot.source)] - x[r, list(slot.target)]
        else:  # different lengths: shift the target block's mean to the source block's
            delta = (src[0, list(slot.source)].mean(0) - x[r, list(slot.target)].mean(0)).expand(len(slot.target), -1)
        if direction is not None:
            delta = (delta @ direction)[:, None] * direction
        x[r, list(slot.target)] += delta
    return x


def refusal_metric(token_ids: Sequence[int]) -> Callable[[Tensor], Tensor]:
    """The patching metric: refusal log-odds of last-position logits, in float64."""
    ids = list(token_ids)

    def metric(last: Tensor) -> Tensor:
        return refusal_logodds(torch.log_softmax(last.double(), dim=-1), ids).double()

    return metric


class PromptReplay(Replay):
    """:class:`~persona_gate.grid.replay.Replay` of one prompt scored by its refusal log-odds."""

    def __init__(self, model: ChatModel, rp: RenderedPrompt, sites: Sequence[HookSite], token_ids: Sequence[int]):
        super().__init__(model, rp.input_ids, sites, refusal_metric(token_ids))


def render_pairs(model: ChatModel, source: Sequence, target: Sequence) -> list[tuple[RenderedPrompt, RenderedPrompt]]:
    if len(source) != len(target) or not source:
        raise PositionError(
            f"pass as many source as target prompts (got {len(source)} and {len(target)}), at least one."
        )

    def rendered(ps: Sequence) -> list[RenderedPrompt]:
        return list(ps) if all(isinstance(p, RenderedPrompt) for p in ps) else render_all(model.tokenizer, list(ps))

    return list(zip(rendered(source), rendered(target)))


def align_pairs(model: ChatModel, pairs: list, positions: str) -> tuple[list[list[Slot]], list[str]]:
    """Aligned slots per pair; every pair must share the same slot labels (one result grid).

    ``positions="auto"`` picks one scheme for the whole batch: token by token only when every pair
    has equal lengths, else roles for all (a mix of the two could never share one grid).
    """
    if positions == "auto":
        positions = "tokens" if all(len(s) == len(t) for s, t in pairs) else "roles"
    slot_sets = [align(model.tokenizer, s, t, positions) for s, t in pairs]
    labels = [sl.label for sl in slot_sets[0]]
    if any([sl.label for sl in slots] != labels for slots in slot_sets):
        raise PositionError(
            "the examples' position slots differ (different templates or, with positions='tokens', "
            "different lengths); patch them separately or use positions='roles'."
        )
    return slot_sets, labels


def _patching_inputs(
    model: ChatModel,
    source: Sequence[ChatPrompt | RenderedPrompt | str],
    target: Sequence[ChatPrompt | RenderedPrompt | str],
    kind: str,
    layers: Sequence[int] | None,
    positions: str,
    what: str,
    swap: bool = False,
) -> tuple[list, list[HookSite], list, list[str]]:
    """What a patching map runs on, checked before any forward: the rendered (source, target) pairs
    (``swap``: each turned round, for noising), the hook sites and each pair's aligned slots, with
    the slot labels they share."""
    check_supported(model, "replay", what=what)
    pairs = render_pairs(model, source, target)
    if swap:
        pairs = [(t, s) for s, t in pairs]
    sites = sites_for(model, layers, kind)
    slot_sets, labels = align_pairs(model, pairs, positions)
    return pairs, sites, slot_sets, labels


def _patching_map(
    model: ChatModel, kind: str, sites: Sequence[HookSite], labels: Sequence[str], n_pairs: int, **fields: Any
) -> LabelledResult:
    """A patching map's result: ``fields`` (values, metric, config, baselines) per (layer, position slot, example)."""
    return LabelledResult(
        kind=kind,
        dims=("layer", "position", "example"),
        coords={"layer": tuple(s.layer for s in sites), "position": tuple(labels), "example": tuple(range(n_pairs))},
        provenance=provenance(model),
        **fields,
    )


def _patch_pair(
    model: ChatModel,
    src_rp: RenderedPrompt,
    tgt_rp: RenderedPrompt,
    slots: list[Slot],
    sites: Sequence[HookSite],
    token_ids: Sequence[int],
    direction: DirectionSet | None,
    batch_size: int,
) -> dict[str, Tensor]:
    """One example pair: the patched target's log-odds (``raw``) and their change (``effect``) per
    (site, slot), and the two clean runs' log-odds (``clean``)."""
    device = model_device(model)
    raw = torch.empty((len(sites), len(slots)), dtype=torch.float64, device=device)
    effect = torch.empty_like(raw)
    src = PromptReplay(model, src_rp, sites, token_ids)
    tgt = PromptReplay(model, tgt_rp, sites, token_ids)
    for si, site in enumerate(sites):
        v = direction.at(site.layer).to(device) if direction is not None else None
        for c in range(0, len(slots), batch_size):
            # One unpatched row rides along in every batch: the effect of a patch is measured
            # against a row computed by exactly the same kernels, so a no-op is exactly 0.
            chunk: list[Slot | None] = [*slots[c : c + batch_size], None]
            changed: dict[str, Tensor] = {}

            def patch(x: Tensor, hook: Any, chunk: list = chunk, site: HookSite = site) -> Tensor:
                s_act = src.acts[site].to(x.dtype)
                y = _patch_rows(x, s_act, chunk, None if v is None else v.to(x.dtype))
                changed["rows"] = (y != x).flatten(1).any(1)
                return y

            hidden = tgt.block_input(site.layer).expand(len(chunk), -1, -1)
            with torch.no_grad():
                out = tgt.run_from(site.layer, hidden, [(resolve(site, model), patch)])
            # A patch that leaves the activation bit-identical changes nothing downstream;
            # say so exactly instead of reporting the batch kernels' last-bit noise.
            delta = torch.where(changed["rows"][:-1].to(out.device), out[:-1] - out[-1], torch.zeros_like(out[:-1]))
            raw[si, c : c + len(chunk) - 1] = out[-1] + delta
            effect[si, c : c + len(chunk) - 1] = delta
    clean = torch.tensor([float(src.metric), float(tgt.metric)], dtype=torch.float64)
    return {"raw": raw, "effect": effect, "clean": clean}


def _pair_cost(
    model: ChatModel,
    src_rp: RenderedPrompt,
    tgt_rp: RenderedPrompt,
    n_slots: int,
    sites: Sequence[HookSite],
    batch_size: int,
) -> Cost:
    """What :func:`_patch_pair` runs: the two clean runs, then per site a re-run from its layer of
    every batch of patched rows plus the unpatched reference row. Held meanwhile: both prompts'
    replays, each every block's input and the activation at every site."""
    L = int(model.cfg.n_layers)
    t = Cost()
    t.hold((L + len(sites)) * (len(src_rp) + len(tgt_rp)) * int(model.cfg.d_model))
    for rp in (src_rp, tgt_rp):  # the two clean runs, recording block inputs
        t.add(1, len(rp), L, unembedded_rows(model, 1, len(rp)))
    for site in sites:
        for c in range(0, n_slots, batch_size):
            rows = min(batch_size, n_slots - c) + 1  # one unpatched reference row per batch
            t.add(rows, len(tgt_rp), L - site.layer, rows)
    return t


def patching_grid(
    model: ChatModel,
    pairs: list,
    slot_sets: list,
    sites: Sequence[HookSite],
    token_ids: Sequence[int],
    direction: DirectionSet | None = None,
    batch_size: int = 32,
) -> GridSpec:
    """Activation patching as a grid: one computed cell per example pair, keyed ``(example,)``."""
    cells = {
        (e,): Computed(
            lambda s=s, t=t, sl=sl: _patch_pair(model, s, t, sl, sites, token_ids, direction, batch_size),
            cost=lambda s=s, t=t, sl=sl: _pair_cost(model, s, t, len(sl), sites, batch_size),
        )
        for e, ((s, t), sl) in enumerate(zip(pairs, slot_sets))
    }
    return GridSpec("activation_patching", cells, desc="patching")


def activation_patching(
    model: ChatModel,
    source: Sequence[ChatPrompt | RenderedPrompt | str],
    target: Sequence[ChatPrompt | RenderedPrompt | str],
    token_ids: Sequence[int],
    *,
    kind: str = "resid_pre",
    layers: Sequence[int] | None = None,
    positions: str = "auto",
    mode: str = "denoising",
    direction: DirectionSet | None = None,
    batch_size: int = 32,
    min_gap: float = 0.5,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> LabelledResult:
    """Restoration per (layer, position slot, example); see the module docstring.

    ``checkpoint``: a folder keeping every finished example pair (see :mod:`persona_gate.grid.store`),
    so an interrupted run resumes at the pair it stopped in.

    Pairs whose clean source and target log-odds differ by less than ``min_gap`` nats carry no
    signal to restore (the ratio would amplify noise): their restoration is NaN (``effect`` and
    ``logodds`` are kept).
    """
    if mode not in ("denoising", "noising"):
        raise PositionError(f"unknown mode {mode!r}; use denoising (source into target) or noising.")
    if direction is not None:
        direction.check_model(model)
    pairs, sites, slot_sets, labels = _patching_inputs(
        model, source, target, kind, layers, positions, "activation patching", swap=mode == "noising"
    )
    store = open_store(
        checkpoint,
        "activation_patching",
        pairs=[(s.input_ids, t.input_ids) for s, t in pairs],
        sites=[str(s) for s in sites],
        labels=list(labels),
        tokens=list(token_ids),
        mode=mode,
        direction=direction,
    )
    spec = patching_grid(model, pairs, slot_sets, sites, token_ids, direction, batch_size)
    got = run_grid(model, spec, store=store, progress=progress)
    store.report()
    raw = torch.stack([got[(e,)]["raw"] for e in range(len(pairs))], dim=-1)
    effect = torch.stack([got[(e,)]["effect"] for e in range(len(pairs))], dim=-1)
    clean = torch.stack([got[(e,)]["clean"] for e in range(len(pairs))], dim=-1)
    raw, effect = raw.cpu(), effect.cpu()
    m_src, m_tgt = clean[0], clean[1]
    if mode == "noising":  # the run was of the target with source activations swapped: undo the swap
        m_src, m_tgt = clean[1], clean[0]
    gap = m_src - m_tgt
    safe_gap = torch.where(gap.abs() >= max(min_gap, 1e-9), gap, torch.full_like(gap, float("nan")))
    # In noising the patched run starts from the source (restoration 1) and moves toward 0.
    restoration = effect / safe_gap + (1.0 if mode == "noising" else 0.0)
    return _patching_map(
        model,
        "activation_patching",
        sites,
        labels,
        len(pairs),
        values={"restoration": restoration.float(), "logodds": raw, "effect": effect},
        baselines={"source_logodds": [float(x) for x in m_src], "target_logodds": [float(x) for x in m_tgt]},
        metric={
            "name": "restoration of first-token refusal log-odds",
            "higher_means": "more like the source (0 = target, 1 = source)",
        },
        config={
            "kind": kind,
            "mode": mode,
            "positions": positions,
            "direction": direction.name if direction is not None else None,
            "token_ids": list(token_ids),
            "min_gap": min_gap,
        },
    )


def gate_layers(
    result: LabelledResult, threshold: float = 0.5, exclude: Sequence[str] = ("[all]",)
) -> list[dict[str, Any]]:
    """Per layer: the slot with the largest mean restoration, a 95% interval over examples, and
    whether it gates refusal: mean >= ``threshold`` with the interval clear of 0 (a mean over
    two noisy pairs whose interval spans 0 is no evidence)."""
    keep = [p for p in result.coords["position"] if p not in exclude]
    r = result.sel(position=keep)["restoration"].double()  # [layer, position, example]
    mean, low, high, counts = mean_interval(r)  # examples with a defined restoration, per cell
    rows = []
    for li, layer in enumerate(result.coords["layer"]):
        best = int(torch.nan_to_num(mean[li], nan=-float("inf")).argmax())
        m, lo, hi = float(mean[li, best]), float(low[li, best]), float(high[li, best])
        rows.append(
            {
                "layer": layer,
                "position": keep[best],
                "restoration": m,
                "low": lo,
                "high": hi,
                "n": int(counts[li, best]),
                "gate": bool(m >= threshold and lo > 0),
            }
        )
    return rows


def attribution_patching(
    model: ChatModel,
    source: Sequence[ChatPrompt | RenderedPrompt | str],
    target: Sequence[ChatPrompt | RenderedPrompt | str],
    token_ids: Sequence[int],
    *,
    kind: str = "resid_pre",
    layers: Sequence[int] | None = None,
    positions: str = "auto",
    progress: bool = True,
) -> LabelledResult:
    """First-order estimate of the patching map: ``(x_source - x_target) . dm/dx`` at the target.

    One forward and one backward per pair give every (layer, slot) at once; compare with
    :func:`activation_patching` via :func:`agreement`.
    """
    pairs, sites, slot_sets, labels = _patching_inputs(
        model, source, target, kind, layers, positions, "attribution patching"
    )
    est = torch.empty((len(sites), len(labels), len(pairs)), dtype=torch.float64)
    for e, ((src_rp, tgt_rp), slots) in enumerate(
        tqdm(list(zip(pairs, slot_sets)), desc="attribution", disable=not progress)
    ):
        src = PromptReplay(model, src_rp, sites, token_ids)
        acts: dict[HookSite, Tensor] = {}

        def keep(site: HookSite):
            def fn(x: Tensor, hook: Any) -> Tensor:
                x.retain_grad()
                acts[site] = x
                return x

            return fn

        ids = torch.tensor([tgt_rp.input_ids], device=model_device(model))
        with torch.enable_grad(), model.hooks(fwd_hooks=[(resolve(s, model), keep(s)) for s in sites]):
            metric = src.metric_of(last_logits(model, ids).float())[0]
            metric.backward()
        m_tgt = float(metric.detach())
        gap = float(src.metric) - m_tgt
        for si, site in enumerate(sites):
            x_t, g = acts[site].detach()[0].double(), acts[site].grad[0].double()
            x_s = src.acts[site][0].double()
            for pi, slot in enumerate(slots):
                if slot.tokenwise:
                    delta = x_s[list(slot.source)] - x_t[list(slot.target)]
                    val = (delta * g[list(slot.target)]).sum()
                elif slot.label == "[all]":
                    val = sum(
                        ((x_s[list(s.source)] - x_t[list(s.target)]) * g[list(s.target)]).sum()
                        if s.tokenwise
                        else (
                            (x_s[list(s.source)].mean(0) - x_t[list(s.target)].mean(0)) * g[list(s.target)].sum(0)
                        ).sum()
                        for s in slots[:-1]
                    )
                else:
                    val = (
                        (x_s[list(slot.source)].mean(0) - x_t[list(slot.target)].mean(0)) * g[list(slot.target)].sum(0)
                    ).sum()
                est[si, pi, e] = float(val) / gap if abs(gap) > 1e-9 else float("nan")
        model.zero_grad(set_to_none=True)
    return _patching_map(
        model,
        "attribution_patching",
        sites,
        labels,
        len(pairs),
        values={"restoration": est.float()},
        metric={"name": "first-order estimate of restoration", "higher_means": "more like the source"},
        config={"kind": kind, "positions": positions, "token_ids": list(token_ids)},
    )


def agreement(exact: LabelledResult, approx: LabelledResult) -> dict[str, float]:
    """How well attribution patching agrees with exact patching (example means per cell)."""
    a = exact.mean("example")["restoration"].double().flatten()
    b = approx.mean("example")["restoration"].double().flatten()
    ok = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[ok], b[ok]
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if len(a) > 1 else float("nan")
    return {
        "pearson": corr,
        "max_abs_diff": float((a - b).abs().max()),
        "mean_abs_diff": float((a - b).abs().mean()),
        "cells": int(len(a)),
    }
