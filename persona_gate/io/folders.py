"""Output folders: every command writes into a folder that is new, empty or of its own kind.

A folder persona_gate writes holds a mark (``.persona_gate.json``: its kind and its writer); one
saved result holds a ``manifest.json``. Each kind of folder is declared where it is defined
(:func:`register_folder_kind`: what it is in words, how an unmarked one written before marks
existed is recognised). :func:`claim_folder` checks, before any work, that a command may write
its kind of folder at a path, and :func:`describe_folder` says in words what is in the way.

Example::

    register_folder_kind("guard", "a guard evaluation (persona-gate guard)")
    out = claim_folder("runs/g", "guard", written_by="persona-gate guard")
    folder_kind(out)  # "guard"; claiming "runs/g" for another kind is an OutputExistsError
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import DiskFullError, OutputExistsError, OutputNotWritableError
from .atomic import atomic_write_text

MANIFEST = "manifest.json"  # the manifest of one saved result (see persona_gate.io.artefacts)
FOLDER_MARK = ".persona_gate.json"  # {"kind": ..., "written_by": ...}: what this folder is

# What each kind of folder is, in words with the command that writes it: kind -> description.
# io knows none of them; every artefact registers its own (register_folder_kind) where it is defined.
FOLDER_KINDS: dict[str, str] = {}
# How folders written before marks existed are recognised: (order, kind, recognise(path, names)), by order.
_RECOGNISERS: list[tuple[int, str, Callable[[Path, set[str]], bool]]] = []


def register_folder_kind(
    kind: str, description: str | None, recognise: Callable[[Path, set[str]], bool] | None = None, *, order: int = 100
) -> str:
    """Declare a kind of output folder: what it is in words (``description``, naming its command; None for a
    ``"result:<kind>"`` that is described as a saved result) and, optionally, how an unmarked folder of it is
    recognised (``recognise(path, visible_names)``; lower ``order`` is tried first). Returns ``kind``."""
    if description is not None:
        FOLDER_KINDS[kind] = description
    if recognise is not None:
        rest = [r for r in _RECOGNISERS if r[1] != kind]
        _RECOGNISERS[:] = sorted([*rest, (order, kind, recognise)], key=lambda r: r[0])
    return kind


def _visible(path: Path) -> list[str]:
    """Entries that are not hidden (hidden ones are marks and this package's own temporaries)."""
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))


def _kind_in(file: Path) -> str | None:
    """The ``kind`` a JSON file (a manifest, a folder mark) declares, or None."""
    try:
        kind = json.loads(file.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def manifest_kind(path: Path) -> str | None:
    """The ``kind`` the ``manifest.json`` of a saved result folder declares, or None."""
    return _kind_in(path / MANIFEST)


def json_keys(path: Path) -> set[str]:
    """The top-level keys of a JSON object file (empty if absent or not an object): for recognisers."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def folder_kind(path: str | Path) -> str | None:
    """What persona_gate folder ``path`` is: a key of :data:`FOLDER_KINDS`, ``"result:<kind>"`` for
    one saved result, or None (absent, empty, or not written by persona_gate).

    Read from the folder's mark; folders written before marks existed are recognised by their files,
    by the recognisers their kinds registered.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    kind = _kind_in(path / FOLDER_MARK)
    if kind is not None and not kind.startswith("result:"):
        return kind  # marked: a registered kind, or one whose module this process has not imported
    names = set(_visible(path))
    if MANIFEST in names:
        kind = manifest_kind(path)
        return f"result:{kind}" if kind else None
    for _, kind, recognise in _RECOGNISERS:
        if recognise(path, names):
            return kind
    return None


def describe_folder(path: str | Path) -> str:
    """What ``path`` holds, in words, for error messages."""
    path = Path(path)
    kind = folder_kind(path)
    if kind in FOLDER_KINDS:
        return FOLDER_KINDS[kind]
    if kind is not None and kind.startswith("result:"):
        return f"one saved {kind.removeprefix('result:')!r} result"
    if kind is not None:  # marked with a kind whose module has not registered it in this process
        try:
            by = json.loads((path / FOLDER_MARK).read_text(encoding="utf-8")).get("written_by")
        except (OSError, ValueError, AttributeError):
            by = None
        return f"a persona_gate {kind!r} folder" + (f" (written by {by})" if isinstance(by, str) and by else "")
    names = _visible(path) if path.is_dir() else []
    if not names:
        return "nothing"
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"files persona_gate did not write ({shown})"


def check_replaceable(
    path: str | Path,
    same: Callable[[Path], bool],
    what: str,
    *,
    file_fix: str = "give a folder path that is new or empty",
    fix: str = "; choose another path (or delete that folder first)",
) -> None:
    """Refuse to replace ``path`` unless it is absent, empty, or ``same(path)`` (what we would write).

    ``what`` names what would be written; ``file_fix`` and ``fix`` end the message for a file in
    the way and for a folder of something else."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a folder; {file_fix}.")
    if _visible(path) and not same(path):
        raise OutputExistsError(
            f"{path} holds {describe_folder(path)}, and writing {what} there would replace it{fix}."
        )


def check_claimable(path: str | Path, kind: str) -> Path:
    """:func:`claim_folder`'s checks, creating nothing: ``path`` may receive a ``kind`` folder.

    A command runs this before it loads a model (a bad ``--out`` fails in the first second), then
    checks the inputs that need the model (layers, windows, a ``--directions`` folder), and only
    then calls :func:`claim_folder`: a command that fails validation creates no folder at all.
    Raises what :func:`claim_folder` would; returns ``path`` as a Path.
    """
    if kind not in FOLDER_KINDS:
        raise ValueError(f"unknown folder kind {kind!r}; one of {sorted(FOLDER_KINDS)}")
    if not str(path).strip():
        raise OutputExistsError(f"the output folder is empty text; give --out a folder path for {FOLDER_KINDS[kind]}.")
    path = Path(path)
    what = FOLDER_KINDS[kind]
    check_replaceable(
        path,
        lambda p: folder_kind(p) == kind,
        what,
        file_fix=f"give --out a folder path for {what}",
        fix=". Choose a new or empty --out folder",
    )
    base = next((p for p in (path, *path.parents) if p.exists()), None)  # where the folder would be made
    if base is not None and not base.is_dir():
        raise OutputNotWritableError(
            f"cannot write to {path} ({base} is a file, not a folder); choose a folder you can write to (--out)."
        )
    if base is not None and not os.access(base, os.W_OK | os.X_OK):
        raise OutputNotWritableError(
            f"cannot write to {path} (permission denied on {base}); choose a folder you can write to (--out)."
        )
    return path


def claim_folder(path: str | Path, kind: str, *, written_by: str = "") -> Path:
    """Check, before any work, that ``path`` may receive a ``kind`` folder; create and mark it.

    Allowed: a new folder, an empty one, or one of the same kind (whose finished parts a run
    resumes from). Anything else -- a file, another kind of persona_gate folder, files of the
    user's -- is an :class:`~persona_gate.errors.OutputExistsError`; a folder that cannot be
    created or written is an :class:`~persona_gate.errors.OutputNotWritableError`. The checks
    alone, creating nothing, are :func:`check_claimable`.
    """
    path = check_claimable(path, kind)
    mark = path / FOLDER_MARK
    try:
        path.mkdir(parents=True, exist_ok=True)
        if _kind_in(mark) == kind:  # already marked as this kind: only check it is still writable
            probe = path / f".write-probe-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")  # the folder must still be writable
            probe.unlink()
        else:
            atomic_write_text(mark, json.dumps({"kind": kind, "written_by": written_by}, indent=1))
    except (DiskFullError, OutputNotWritableError):
        raise
    except OSError as e:
        raise OutputNotWritableError(
            f"cannot write to {path} ({e.strerror or e}); choose a folder you can write to (--out)."
        ) from None
    return path


# The paper run (experiments.pipeline) and the directions command (cli) are registered here, not
# beside their writers: the HTML report (plots, which never imports computation) must recognise
# their folders, also unmarked ones written before folders were marked.
register_folder_kind(
    "run",
    "a paper run (persona-gate run / demo)",
    lambda path, names: (
        "config.json" in names
        and (
            {"stage_seconds.json", "cells"} & names
            or "n_prompts_per_group" in json_keys(path / "summary.json")
            or {"model", "n_fit", "n_eval"} <= json_keys(path / "config.json")  # a run's RunConfig
        )
    ),
    order=60,
)
register_folder_kind(
    "directions",
    "fitted directions (persona-gate directions)",
    lambda path, names: "summary.json" in names and "rows" in json_keys(path / "summary.json"),
    order=70,
)
