"""Fault injection shared by the out-of-memory tests: allocations that fail above a batch size."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def oom_above(
    model, rows: int, error: Callable[[], Exception] = lambda: torch.OutOfMemoryError("simulated: CUDA out of memory")
) -> Iterator[None]:
    """Every block forward of more than ``rows`` rows fails to allocate."""

    def pre(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[0] > rows:
            raise error()

    handles = [b.register_forward_pre_hook(pre, with_kwargs=True) for b in model.blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
