"""Which positions of a forward are pads, prompt tokens or generated tokens.

persona_gate's runners (caching, scoring, generation) publish the attention mask of the padded
prompt batch they are about to run in a context variable; intervention hooks read it to leave
pads untouched and to tell prompt from generated positions, with or without a KV cache. Outside
a runner nothing is published and every position of a forward counts as a prompt position.

Example::

    with prompt_layout(batch.attention_mask):
        model(batch.input_ids, attention_mask=batch.attention_mask)
    position_mask(x, "prompt")      # inside a hook: [batch, seq, 1] of 0/1
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar

import torch
from torch import Tensor

from ..runtime import bound

SCOPES = ("prompt", "generated", "both")

# Layers at which persona_gate's runners stopped a forward early (caching needs no later
# blocks); intervention hooks beyond such a stop legitimately never fire.
_EARLY_STOPS: ContextVar[list[int] | None] = ContextVar("persona_gate_early_stops", default=None)


def record_early_stops() -> AbstractContextManager[list[int]]:
    """Collect the layers at which runners stop forwards early, inside the block."""
    return bound(_EARLY_STOPS, [])


def note_early_stop(layer: int) -> None:
    stops = _EARLY_STOPS.get()
    if stops is not None:
        stops.append(layer)


# The attention mask [batch, prompt_len] of the batch being run by a persona_gate runner.
_LAYOUT: ContextVar[Tensor | None] = ContextVar("persona_gate_prompt_layout", default=None)


def prompt_layout(attention_mask: Tensor) -> AbstractContextManager[Tensor]:
    """Tell intervention hooks which positions of the coming forwards are pads and prompt."""
    return bound(_LAYOUT, attention_mask)


def position_mask(x: Tensor, scope: str) -> Tensor | None:
    """``[batch, seq, 1]`` 0/1 mask of the positions ``scope`` covers in activation ``x``; None = all.

    Without a published layout every position is a prompt position. With one (prompt length L):
    a forward of length 1 after a prompt of length > 1 is a KV-cached decoding step (one generated
    token); otherwise position i is generated iff i >= L, and prompt pads are never covered.
    """
    layout = _LAYOUT.get()
    b, seq = x.shape[0], x.shape[1]
    if layout is None:
        return None if scope in ("prompt", "both") else torch.zeros(b, seq, 1, dtype=x.dtype, device=x.device)
    if layout.shape[0] != b:
        raise ValueError(
            f"the published prompt layout has batch size {layout.shape[0]} but the forward has {b}; "
            "run interventions through persona_gate's runners or without a layout."
        )
    L = layout.shape[1]
    mask = layout.to(x.device).bool()
    if seq == 1 and L > 1:
        generated = torch.ones(b, 1, dtype=torch.bool, device=x.device)
        not_pad = generated
    else:
        generated = (torch.arange(seq, device=x.device) >= L).expand(b, seq)
        extra = torch.ones(b, max(seq - L, 0), dtype=torch.bool, device=x.device)
        not_pad = torch.cat([mask, extra], dim=1)[:, :seq]
    cover = {"prompt": ~generated, "generated": generated, "both": torch.ones_like(generated)}[scope] & not_pad
    return cover[..., None].to(x.dtype)
