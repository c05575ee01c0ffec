"""Many processes, one result: a run's cells split over the processes that ``torchrun`` or
``accelerate launch`` starts.

Both launchers start ``N`` copies of the command with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` (and a rendezvous address) in the environment. :func:`from_environment` reads
them and joins the process group (``gloo`` on CPU, ``nccl`` on CUDA); each process then works on
its own device (``cuda:<LOCAL_RANK>``). Inside a stage that is split (every stage that is a grid
of cells), :func:`~persona_gate.grid.run.run_grid` has every process take the same decision
about what is left to compute, then compute its share (:func:`share_of`: every ``N``-th chunk of
cells, each chunk exactly as a single process computes it) and write each finished cell
atomically into the shared run folder, as a single process does; after a barrier every process
reads the others' cells, and process 0 writes the stage folder. Stages that are one computation
(fitting directions) run on process 0 while the others wait. The result is bit-identical to a one-process run, and a run
whose worker died resumes like any other: its finished cells are on disk.

Example (one node, 4 GPUs)::

    torchrun --nproc_per_node 4 -m persona_gate.cli.main run --config paper/qwen2.5-7b-instruct.toml --out runs/qwen
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from ..errors import ConfigError, PersonaGateError
from ..runtime import bound

T = TypeVar("T")


class WorkerError(PersonaGateError):
    """Another process of a multi-process run did not deliver its share."""


@dataclass(frozen=True)
class Workers:
    """This process's place among the run's processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def many(self) -> bool:
        return self.world > 1

    @property
    def lead(self) -> bool:
        """Process 0: writes stage folders, the summary and the report."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.many:
            torch.distributed.barrier()

    def device(self) -> str | None:
        """The device of this process when the run names none: its own GPU, or None (the default)."""
        return f"cuda:{self.local_rank}" if self.many and torch.cuda.is_available() else None


ONE = Workers()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer; start the processes with torchrun "
            "or accelerate launch, which set it."
        ) from None


def from_environment(timeout_minutes: float = 60.0) -> Workers:
    """The processes ``torchrun`` / ``accelerate launch`` started (one process when neither did);
    joins their process group the first time."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world <= 1:
        return ONE
    if not 0 <= rank < world:
        raise ConfigError(
            f"RANK={rank} is outside WORLD_SIZE={world}; start the processes with torchrun or accelerate launch."
        )
    local = _env_int("LOCAL_RANK", rank)
    dist = torch.distributed
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return Workers(rank, world, local)


_SHARE: ContextVar[Workers] = ContextVar("persona_gate_workers", default=ONE)


def sharing(workers: Workers) -> AbstractContextManager[Workers]:
    """Inside the block, checkpointed grids split their cells over ``workers``."""
    return bound(_SHARE, workers)


def current() -> Workers:
    return _SHARE.get()


def share_of(items: Sequence[T], workers: Workers) -> list[T]:
    """This process's share of ``items``: every ``world``-th, from ``rank`` (all of them for one process)."""
    return list(items[workers.rank :: workers.world])


def missing_error(what: str, keys: Sequence[Any]) -> WorkerError:
    return WorkerError(
        f"{len(keys)} {what} (e.g. {keys[:3]}) were not delivered by the other processes of this run "
        "(one of them stopped?); run the same command again: every finished cell is kept and only the "
        "rest is computed."
    )
