"""The cell store: a grid keeps every finished cell on disk, so a crash loses one cell.

A grid (steering, re-introduction, window projection, patching, the guard, screening) is a set
of independent cells, each named by its coordinates (``("harmful", 4, 2.0)``: request, layer,
alpha). With a store folder each finished cell is written to ``DIR/<coordinates>.safetensors``
atomically (:func:`persona_gate.io.atomic_write_bytes`): a reader, or a resumed run, sees a
complete cell or none. ``DIR/fingerprint.json`` records what the cells were computed for (the
grid's parameters, a hash of its directions, prompts and refusal tokens); reopening the folder
for a different computation raises :class:`ResumeMismatchError` instead of mixing results.
Opening a store removes the temporaries of writers that have ended, never those of a live
process (another notebook or run writing into the same folder).

An exception in the middle of a grid (out of memory, Ctrl-C, a bug) leaves the finished cells
in ``DIR``; running the grid again with the same store computes only the rest, and the result
is bit-identical to an uninterrupted run (each cell is computed independently).

Example::

    store = open_store("runs/x/cells/steering_sweep", "steering_sweep", direction=persona, layers=[2, 4])
    store.put(("harmful", 2, 4.0), {"refused": refused})
    store.get(("harmful", 2, 4.0))["refused"]
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import ResumeMismatchError
from ..io import atomic_write_bytes, atomic_write_text, remove_stale_temporaries

log = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"
_SAFE = re.compile(r"[^A-Za-z0-9._=,-]+")
Key = tuple[Hashable, ...]  # a cell's coordinates


def fingerprint(**parts: Any) -> str:
    """A stable hash of what a computation depends on: JSON-able values, tensors by their bytes,
    direction sets by their vectors, prompts by their text (anything with a ``fingerprint_parts()``
    method by what it returns)."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"tensor{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif callable(getattr(x, "fingerprint_parts", None)):
            feed(x.fingerprint_parts())
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


def cell_name(key: Key) -> str:
    """The file stem of cell ``key``: its coordinates joined by commas (floats by ``repr``), made
    safe for any file system; a short hash is added when that had to change the text, so two
    keys never share a file."""
    text = ",".join(repr(c) if isinstance(c, float) else str(c) for c in key)
    safe = _SAFE.sub("_", text)
    if safe != text:
        safe += "~" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return safe


@runtime_checkable
class Store(Protocol):
    """Where a grid keeps its finished cells (what :func:`~persona_gate.grid.run.run_grid` asks of a
    store): ``get`` a cell's tensors (None when it is not finished), ``put`` a finished one, ``has``
    (without reading it), ``report`` what was restored and computed. ``shared``: the other
    processes of a run see the same cells (so they can split them)."""

    shared: bool
    restored: int
    computed: int

    def has(self, key: Key) -> bool: ...

    def get(self, key: Key) -> dict[str, torch.Tensor] | None: ...

    def put(self, key: Key, tensors: dict[str, torch.Tensor]) -> None: ...

    def report(self) -> None: ...


class CellStore:
    """The :class:`Store` of one computation on disk: one small safetensors file per finished cell."""

    shared = True  # other processes of a run see the same cells

    def __init__(self, path: str | Path, fp: str, *, what: str = "grid", tidy: bool = True) -> None:
        self.path = Path(path)
        self.what = what
        self.restored = 0
        self.computed = 0
        self.path.mkdir(parents=True, exist_ok=True)
        if tidy:  # temporaries of a process killed mid-write (never a cell); a live writer's are kept
            remove_stale_temporaries(self.path, (".*.tmp-*",))
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
            atomic_write_text(fpath, json.dumps({"fingerprint": fp, "what": what}))
        have = sum(1 for _ in self.path.glob("*.safetensors"))
        if have:
            log.info("resuming %s: %d finished cells in %s", what, have, self.path)

    def _file(self, key: Key) -> Path:
        return self.path / f"{cell_name(key)}.safetensors"

    def has(self, key: Key) -> bool:
        """Whether cell ``key`` is on disk (without reading it)."""
        return self._file(key).exists()

    def get(self, key: Key) -> dict[str, torch.Tensor] | None:
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

    def put(self, key: Key, tensors: dict[str, torch.Tensor]) -> None:
        atomic_write_bytes(self._file(key), save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
        self.computed += 1

    def report(self) -> None:
        log.info("%s: %d cells restored from %s, %d computed", self.what, self.restored, self.path, self.computed)


class MemoryStore:
    """The :class:`Store` when no store folder is given: nothing is kept between calls."""

    shared = False
    restored = computed = 0

    def has(self, key: Key) -> bool:
        return False

    def get(self, key: Key) -> None:
        return None

    def put(self, key: Key, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def report(self) -> None:
        pass


def open_store(path: str | Path | None, what: str, **parts: Any) -> Store:
    """A :class:`CellStore` at ``path`` for the computation described by ``parts`` (or a
    :class:`MemoryStore` when ``path`` is None)."""
    if path is None:
        return MemoryStore()
    from .shard import current

    fp, workers = fingerprint(what=what, **parts), current()
    if not workers.many:
        return CellStore(path, fp, what=what)
    # Several processes share the folder: process 0 tidies it and writes the fingerprint, then the
    # others open it (tidying then could remove another process's cell in the middle of its write).
    store = CellStore(path, fp, what=what) if workers.lead else None
    workers.barrier()
    return store if store is not None else CellStore(path, fp, what=what, tidy=False)
