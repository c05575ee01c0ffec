"""Block replay of one prompt: run it once, then re-run its blocks from any layer on changed inputs.

A :class:`Replay` runs a prompt once, recording every block's input and call arguments
(:func:`~persona_gate.models.adapter.record_blocks`) and the activations at the given sites;
:meth:`Replay.run_from` re-runs blocks ``k..L-1`` on a batch of changed copies of block ``k``'s
input and scores the last position with the replay's metric. Activation and attribution
patching are built on it; prefix reuse (:mod:`~persona_gate.grid.prefix`) replays padded
batches of many prompts through the same two adapter calls.

Example::

    rp = Replay(model, rendered.input_ids, sites_for(model), metric=lambda logits: logits[:, 0])
    rp.run_from(3, rp.block_input(3).expand(4, -1, -1), hooks)       # [4] metrics
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..models.adapter import head_logits, record_blocks, run_blocks
from ..models.loading import model_device
from ..models.protocol import ChatModel
from ..sites import HookSite, resolve


class Replay:
    """A clean run of one prompt: every block's input and call arguments, and the activations at ``sites``;
    ``metric(last_logits) -> [batch]`` scores a run."""

    def __init__(
        self, model: ChatModel, input_ids: Sequence[int], sites: Sequence[HookSite], metric: Callable[[Tensor], Tensor]
    ) -> None:
        self.model = model
        self.metric_of = metric
        self.ids = torch.tensor([list(input_ids)], device=model_device(model))
        self.acts: dict[HookSite, Tensor] = {}

        def keep(site: HookSite) -> Callable:
            def fn(x: Tensor, hook: Any) -> None:
                self.acts[site] = x.detach().clone()

            return fn

        self.record, logits = record_blocks(model, self.ids, [(resolve(s, model), keep(s)) for s in sites])
        self.metric = self.metric_of(logits)[0]

    def block_input(self, layer: int) -> Tensor:
        return self.record.inputs[layer]

    def run_from(self, k: int, hidden: Tensor, fwd_hooks: list) -> Tensor:
        """Blocks k..L-1 on ``hidden`` (batch of copies), final norm, unembed and score the last position."""
        x = run_blocks(self.model, self.record, k, hidden, fwd_hooks)
        return self.metric_of(head_logits(self.model, x[:, -1]))
