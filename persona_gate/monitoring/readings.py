"""Turn readings: the residual stream at every turn of a conversation, from one forward per render.

For every turn ``k`` of a conversation (each assistant reply, plus a pending reply when the
conversation ends with a user message) two readings of the residual stream at each site:

* ``start``: at the token where the turn's first reply token is predicted;
* ``response``: the mean over the reply's tokens (NaN for a pending or an empty reply).

Renders come from :func:`persona_gate.prompts.conversation.render_conversation` (one per conversation
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..core.activations import check_context, normalise_sites, padded_batches
from ..core.directions import DirectionSet
from ..core.readout import read_batch
from ..errors import ConfigError, NonFiniteError, PositionError, UnknownHookSiteError
from ..models.loading import model_device
from ..models.protocol import ChatModel
from ..prompts.conversation import Conversation, RenderedConversation, render_conversation
from ..sites import HookSite

READINGS: tuple[str, ...] = ("start", "response")


@dataclass(frozen=True)
class TurnActivations:
    """``acts[turn, reading, site, d_model]`` of one conversation (NaN where a reply is missing)."""

    conversation: Conversation
    acts: Float[Tensor, "turn reading site d_model"]
    sites: tuple[HookSite, ...]
    n_forwards: int
    n_tokens: int
    n_tokens_per_prefix: int


def _check_context(model: ChatModel, segments: Sequence[RenderedConversation], name: str) -> None:
    try:
        check_context(model, segments)
    except PositionError as e:
        raise PositionError(
            f"conversation {name or '(unnamed)'}: {e} For a conversation: monitor a shorter one (split it, or "
            "drop its earliest turns)."
        ) from None


def turn_activations(
    model: ChatModel,
    conversations: Sequence[Conversation],
    sites: Sequence[HookSite | str],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> list[TurnActivations]:
    """Residual streams at every turn's response start and mean over its reply, per conversation.

    Renders are left-padded and batched by length (:func:`persona_gate.core.activations.padded_batches`);
    each hook reduces ``[batch, seq, d]`` at once to the needed rows, and the forward stops after
    the last requested site.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}; pass a positive batch size.")
    sites = tuple(normalise_sites(model, sites))
    d = int(model.cfg.d_model)
    per_conv = [render_conversation(model.tokenizer, c) for c in conversations]
    for c, segs in zip(conversations, per_conv):
        _check_context(model, segs, c.name)
    acts = [torch.full((len(c.turns), len(READINGS), len(sites), d), float("nan")) for c in conversations]
    read = [torch.zeros((len(c.turns), len(READINGS)), dtype=torch.bool) for c in conversations]
    owner = [ci for ci, segs in enumerate(per_conv) for _ in segs]
    renders = [seg for segs in per_conv for seg in segs]
    device = model_device(model)
    bar = tqdm(total=len(renders), desc="monitoring", unit="render", disable=not progress)
    try:
        for pb in padded_batches(renders, batch_size, model.tokenizer.pad_token_id):
            batch = [renders[i] for i in pb.indices]
            # Row 2j reads turn j's response start, row 2j + 1 averages its reply (0 on pads).
            R = len(READINGS) * max(len(seg.turns) for seg in batch)
            W = torch.zeros((len(batch), R, pb.input_ids.shape[1]), dtype=torch.float32)
            for b, (seg, pad) in enumerate(zip(batch, pb.offsets)):
                for j, tp in enumerate(seg.turns):
                    W[b, 2 * j, pad + tp.start] = 1.0
                    if tp.response is not None:
                        lo, hi = tp.response
                        W[b, 2 * j + 1, pad + lo : pad + hi] = 1.0 / (hi - lo)
            W = W.to(device)
            out = read_batch(model, pb.input_ids, pb.attention_mask, W, sites)
            for b, (i, seg) in enumerate(zip(pb.indices, batch)):
                ci = owner[i]
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
    if len(layers) == 0:
        raise UnknownHookSiteError(
            f"no layers were given (layers=[]); pass layers=None for every layer of direction set {persona.name!r} "
            f"({persona.layers}), or a non-empty list of them."
        )
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
