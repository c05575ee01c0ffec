"""What the fault tests share: a small paper run on the command line, and allocations that fail above a batch size."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from persona_gate.experiments.pipeline import RunConfig

# A paper run small enough to start, kill and resume many times in one test.
SMALL_RUN = RunConfig(
    model="organism", n_fit=16, n_eval=6, alphas=[0.0, 4.0], window_width=3, random_seeds=2, patch_examples=2, seed=0
)


def write_config(path: Path, cfg: RunConfig = SMALL_RUN) -> Path:
    """``cfg`` as the TOML file ``persona-gate run --config`` reads."""
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.__dict__.items() if v is not None))
    return path


def run_command(cfg: Path, out: Path, *flags: str) -> list[str]:
    """``persona-gate [flags] run --config cfg --out out --no-progress`` in a fresh interpreter."""
    return [
        sys.executable,
        "-m",
        "persona_gate.cli.main",
        *flags,
        "run",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--no-progress",
    ]


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
