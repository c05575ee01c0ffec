"""Turn readings: the residual stream at every turn of a conversation, from one forward per render.

For every turn ``k`` of a conversation (each assistant reply, plus a pending reply when the
conversation ends with a user message) two readings of the residual stream at each site:

* ``start``: at the token where the turn's first reply token is predicted;
* ``response``: the mean over the reply's tokens (NaN for a pending or an empty reply).

Renders come from :func:`persona_gate.conversation.render_conversation` (one per conversation
for prefix-stable templates); they are left-padded and batched by length, each hook reduces
``[batch, seq, d_model]`` at once to the needed rows, and the forward stops after the last
requested site. Under causal attention a turn read from the whole conversation equals the
same turn read from a forward over its own prefix (tested to 1e-4).

Example::

    (ta,) = turn_activations(model, [conversation], sites_for(model, [2, 3]))
    ta.acts.shape            # (n_turns, 2, 2, d_model): turn x reading x site x d
    project_turns(ta.acts, unit_vectors(persona, ta.sites))   # float64 [turn, reading, site]
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .conversation import Conversation, RenderedConversation, render_conversation
from .directions import DirectionSet
from .errors import NonFiniteError, PositionError, UnknownHookSiteError
from .layout import note_early_stop, prompt_layout
from .models import model_device
from .sites import HookSite, resolve

READINGS: tuple[str, ...] = ("start", "response")
# Within one block the sites fire in this order; used to know which hook fires last.
_KIND_ORDER = {"resid_pre": 0, "attn_out": 1, "resid_mid": 2, "mlp_out": 3, "resid_post": 4}


class _StopForward(Exception):
    """Raised by the last needed hook: later blocks and the unembedding are not needed."""


@dataclass(frozen=True)
class TurnActivations:
    """``acts[turn, reading, site, d_model]`` of one conversation (NaN where a reply is missing)."""

    conversation: Conversation
    acts: Float[Tensor, "turn reading site d_model"]
    sites: tuple[HookSite, ...]
    n_forwards: int
    n_tokens: int
    n_tokens_per_prefix: int


def _check_context(model: Any, segments: Sequence[RenderedConversation], name: str) -> None:
    n_ctx = getattr(model.cfg, "n_ctx", None)
    longest = max(len(s) for s in segments)
    if n_ctx and longest > n_ctx:
        raise PositionError(
            f"conversation {name or '(unnamed)'} renders to {longest} tokens but the model's context is "
            f"{n_ctx}; monitor a shorter conversation (split it, or drop its earliest turns)."
        )


def turn_activations(
    model: Any,
    conversations: Sequence[Conversation],
    sites: Sequence[HookSite],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> list[TurnActivations]:
    """Residual streams at every turn's response start and mean over its reply, per conversation.

    Renders are left-padded and batched by length; each hook reduces ``[batch, seq, d]`` at once
    to the needed rows, and the forward stops after the last requested site.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    sites = tuple(sites)
    names = [resolve(s, model) for s in sites]
    last_site = max(range(len(sites)), key=lambda i: (sites[i].layer, _KIND_ORDER[sites[i].kind]))
    d = int(model.cfg.d_model)
    per_conv = [render_conversation(model.tokenizer, c) for c in conversations]
    for c, segs in zip(conversations, per_conv):
        _check_context(model, segs, c.name)
    acts = [torch.full((len(c.turns), len(READINGS), len(sites), d), float("nan")) for c in conversations]
    read = [torch.zeros((len(c.turns), len(READINGS)), dtype=torch.bool) for c in conversations]
    jobs = [(ci, seg) for ci, segs in enumerate(per_conv) for seg in segs]
    jobs.sort(key=lambda j: -len(j[1]))
    device, pad_id = model_device(model), model.tokenizer.pad_token_id
    bar = tqdm(total=len(jobs), desc="monitoring", unit="render", disable=not progress)
    try:
        for b0 in range(0, len(jobs), batch_size):
            batch = jobs[b0 : b0 + batch_size]
            L = max(len(seg) for _, seg in batch)
            R = len(READINGS) * max(len(seg.turns) for _, seg in batch)
            ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), L), dtype=torch.long)
            W = torch.zeros((len(batch), R, L), dtype=torch.float32)
            for b, (_, seg) in enumerate(batch):
                pad = L - len(seg)
                ids[b, pad:] = torch.tensor(seg.input_ids)
                mask[b, pad:] = 1
                for j, tp in enumerate(seg.turns):
                    W[b, 2 * j, pad + tp.start] = 1.0
                    if tp.response is not None:
                        lo, hi = tp.response
                        W[b, 2 * j + 1, pad + lo : pad + hi] = 1.0 / (hi - lo)
            W = W.to(device)
            out = torch.empty((len(batch), R, len(sites), d), dtype=torch.float32)
            fired: set[int] = set()

            def make_hook(k: int):
                def hook(x: Tensor, hook: Any) -> None:
                    out[:, :, k] = torch.einsum("brl,bld->brd", W, x.float()).cpu()
                    fired.add(k)
                    if k == last_site:
                        raise _StopForward

                return hook

            with torch.no_grad(), prompt_layout(mask), model.hooks(fwd_hooks=[(n, make_hook(k)) for k, n in enumerate(names)]):
                try:
                    model(ids.to(device), attention_mask=mask.to(device), return_type=None)
                except _StopForward:
                    note_early_stop(sites[last_site].layer)  # hooks of later layers rightly never fire
            if len(fired) != len(sites):
                missing = [names[k] for k in range(len(names)) if k not in fired]
                raise UnknownHookSiteError(
                    f"hooks {missing} never fired; load the model with persona_gate.load_chat_model or pick other sites."
                )
            for b, (ci, seg) in enumerate(batch):
                for j, tp in enumerate(seg.turns):
                    acts[ci][tp.turn - 1, 0] = out[b, 2 * j]
                    read[ci][tp.turn - 1, 0] = True
                    if tp.response is not None:
                        acts[ci][tp.turn - 1, 1] = out[b, 2 * j + 1]
                        read[ci][tp.turn - 1, 1] = True
            bar.update(len(batch))
    finally:
        bar.close()
    results = []
    for c, segs, a, r in zip(conversations, per_conv, acts, read):
        if not torch.isfinite(a[r]).all():
            raise NonFiniteError("non-finite activations (NaN/inf); load the model in float32 (dtype='float32').")
        # What re-running every turn's prefix (and reply) from scratch would cost, for the record.
        per_prefix = sum(t.start + 1 if t.response is None else t.response[1] for s in segs for t in s.turns)
        results.append(TurnActivations(c, a, sites, len(segs), sum(len(s) for s in segs), per_prefix))
    return results


def as_conversation(conversation: Conversation | Sequence[Mapping[str, str]] | str | os.PathLike) -> Conversation:
    if isinstance(conversation, Conversation):
        return conversation
    if isinstance(conversation, (str, os.PathLike)):
        return Conversation.load_jsonl(conversation)
    return Conversation.from_messages(conversation)


def direction_sites(persona: DirectionSet, layers: Sequence[int] | None) -> tuple[HookSite, ...]:
    kinds = sorted({s.kind for s in persona.sites})
    if len(kinds) != 1:
        raise UnknownHookSiteError(
            f"direction set {persona.name!r} mixes site kinds {kinds}; fit it at one kind (e.g. resid_pre)."
        )
    if layers is None:
        return persona.sites
    have = set(persona.layers)
    missing = [layer for layer in layers if layer not in have]
    if missing:
        raise UnknownHookSiteError(
            f"layers {missing} are not in direction set {persona.name!r} (it has {persona.layers}); pass layers it holds."
        )
    return tuple(HookSite(int(layer), kinds[0]) for layer in dict.fromkeys(layers))


def unit_vectors(ds: DirectionSet, sites: Sequence[HookSite]) -> Tensor:
    return torch.stack([ds.at(s) for s in sites]).double()


def fingerprint(ds: DirectionSet, sites: Sequence[HookSite]) -> str:
    """A short hash of a direction set's unit vectors at ``sites``: ties a calibration to its direction."""
    h = hashlib.sha256()
    for s in sites:
        h.update(str(s).encode())
        h.update(ds.at(s).detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def project_turns(acts: Tensor, unit: Tensor) -> Tensor:
    """``acts[..., site, d] . unit[site, d]`` in float64 (NaN rows stay NaN)."""
    return (acts.double() * unit).sum(-1)

