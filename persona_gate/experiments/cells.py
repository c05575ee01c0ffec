"""Cell checkpoints: a long sweep keeps every finished cell on disk, so a crash loses one cell.

A sweep (steering, re-introduction, window projection, patching) is a loop over independent
cells. With ``checkpoint=DIR`` each finished cell is written to ``DIR/<key>.safetensors``
atomically (temporary sibling, fsync, rename): a reader, or a resumed run, sees a complete cell
or none. ``DIR/fingerprint.json`` records what the cells were computed for (the experiment's
parameters, a hash of its directions, prompts and refusal tokens); reopening the folder for a
different computation raises :class:`ResumeMismatchError` instead of mixing results.

An exception in the middle of a sweep (out of memory, Ctrl-C, a bug) leaves the finished cells
in ``DIR``; calling the experiment again with the same ``checkpoint`` computes only the rest,
and the result is bit-identical to an uninterrupted run (each cell is computed independently).

Example::

    sweep = steering_sweep(model, persona, checkpoint="runs/x/sweep.cells")   # killed half-way ...
    sweep = steering_sweep(model, persona, checkpoint="runs/x/sweep.cells")   # ... resumes there
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import ResumeMismatchError

log = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"
_SAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def fingerprint(**parts: Any) -> str:
    """A stable hash of what a computation depends on: JSON-able values, tensors by their bytes,
    direction sets by their vectors, prompts by their text."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"tensor{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif hasattr(x, "vectors") and hasattr(x, "sites"):  # a DirectionSet
            feed(["direction_set", x.name, [str(s) for s in x.sites], x.vectors, x.raw_norms])
        elif hasattr(x, "system") and hasattr(x, "user"):  # a ChatPrompt
            feed(["prompt", x.system, x.user, getattr(x, "response", None)])
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                feed(str(k))
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"[{len(x)}".encode())
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(json.dumps(x, default=str).encode())

    feed(parts)
    return h.hexdigest()[:32]


class CellCheckpoint:
    """Finished cells of one computation, one small safetensors file per cell."""

    def __init__(self, path: str | Path, fp: str, *, what: str = "sweep", tidy: bool = True) -> None:
        self.path = Path(path)
        self.what = what
        self.restored = 0
        self.computed = 0
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob(".*.tmp-*") if tidy else ():  # left by a process killed mid-write; never a cell
            stale.unlink(missing_ok=True)
        fpath = self.path / FINGERPRINT
        if fpath.exists():
            try:
                stored = json.loads(fpath.read_text(encoding="utf-8")).get("fingerprint")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                stored = None
            if stored != fp:
                raise ResumeMismatchError(
                    f"checkpoint {self.path} holds cells of a different {what} (other parameters, directions or "
                    "prompts); pass a fresh checkpoint folder, or delete this one to start over."
                )
        else:
            from ..io import atomic_write_text

            atomic_write_text(fpath, json.dumps({"fingerprint": fp, "what": what}))
        have = sum(1 for _ in self.path.glob("*.safetensors"))
        if have:
            log.info("resuming %s: %d finished cells in %s", what, have, self.path)

    def has(self, key: str) -> bool:
        """Whether cell ``key`` is on disk (without reading it)."""
        return self._file(key).exists()

    def _file(self, key: str) -> Path:
        return self.path / f"{_SAFE.sub('_', key)}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        f = self._file(key)
        if not f.exists():
            return None
        try:
            cell = load_file(str(f))
        except (SafetensorError, OSError, ValueError):
            log.warning("checkpoint cell %s is unreadable; recomputing it", f)
            return None
        self.restored += 1
        return cell

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        f = self._file(key)
        tmp = f.with_name(f".{f.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, f)
        finally:
            tmp.unlink(missing_ok=True)
        self.computed += 1

    def cell(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The stored cell ``key``, or ``compute()`` stored under it."""
        got = self.get(key)
        if got is None:
            got = compute()
            self.put(key, got)
        return got

    def report(self) -> None:
        log.info("%s: %d cells restored from %s, %d computed", self.what, self.restored, self.path, self.computed)


class _NoCheckpoint:
    """The in-memory stand-in when no checkpoint folder is given."""

    restored = computed = 0

    def get(self, key: str) -> None:
        return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def cell(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return compute()

    def report(self) -> None:
        pass


def open_checkpoint(path: str | Path | None, what: str, **parts: Any) -> CellCheckpoint | _NoCheckpoint:
    """A :class:`CellCheckpoint` at ``path`` for the computation described by ``parts`` (or none)."""
    if path is None:
        return _NoCheckpoint()
    from .workers import current

    fp, workers = fingerprint(what=what, **parts), current()
    if not workers.many:
        return CellCheckpoint(path, fp, what=what)
    # Several processes share the folder: process 0 tidies it and writes the fingerprint, then the
    # others open it (tidying then could remove another process's cell in the middle of its write).
    ck = CellCheckpoint(path, fp, what=what) if workers.lead else None
    workers.barrier()
    return ck if ck is not None else CellCheckpoint(path, fp, what=what, tidy=False)


def scored_cells(
    scorer: Any,
    cells: CellCheckpoint | _NoCheckpoint,
    prompts: Sequence[Any],
    specs: dict[str, Sequence[Any]],
    derive: Callable[[str, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    *,
    base: Sequence[Any] = (),
    bar: Any = None,
) -> tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor | None]:
    """Every cell ``key -> interventions`` of one prompt set: restored from ``cells`` where finished,
    the rest scored together by prefix reuse (``scorer.cells``); ``derive(key, logprobs, clean)`` turns
    a cell's first-token log-probs (and the clean run's) into what is kept, which is checkpointed as
    soon as it exists.

    Returns the cells and the clean run's log-probs (None when every cell was restored).
    """
    from .workers import current, missing_error

    workers = current()
    split = workers.many and isinstance(cells, CellCheckpoint)
    if split:  # every process decides what is left from the same folder, before any of them adds to it
        workers.barrier()
    got: dict[str, dict[str, torch.Tensor]] = {}
    todo = []
    for key in specs:
        done = cells.get(key)
        if done is None:
            todo.append(key)
        else:
            got[key] = done
            if bar is not None:
                bar.update()
    if split:
        workers.barrier()
    if not todo:
        return got, None

    def finished(i: int, lp: torch.Tensor, clean: torch.Tensor) -> None:
        key = todo[i]
        got[key] = derive(key, lp, clean)
        cells.put(key, got[key])
        if bar is not None:
            bar.update()

    share = (workers.rank, workers.world) if split else (0, 1)
    clean, _ = scorer.cells(prompts, [specs[k] for k in todo], *base, on_cell=finished, share=share)
    if split:  # the other processes' cells, once they have all written theirs
        workers.barrier()
        for key in todo:
            if key not in got:
                done = cells.get(key)
                if done is None:
                    raise missing_error("cells", [k for k in todo if k not in got])
                got[key] = done
                if bar is not None:
                    bar.update()
    return got, clean
