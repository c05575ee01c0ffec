"""Saved artefacts: a folder of ``manifest.json`` + ``tensors.safetensors``, written atomically.

The manifest carries the artefact's ``kind``, a ``schema_version``, the tensors' shapes and the
provenance; the tensors go to safetensors (no pickle is ever loaded). A folder is written next to
its destination under a temporary name and renamed into place, so a reader never sees a
half-written file: the old complete folder, the new complete one, or (for the instant between
two renames, when replacing) none; a failed replace puts the old folder back.

Example::

    save_artefact("runs/x/directions", "direction_set", {"vectors": v}, {"name": "persona"})
    manifest, tensors = load_artefact("runs/x/directions", "direction_set")
    manifest["schema_version"]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ArtefactError, SchemaVersionError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a file through a temporary sibling and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_replace_dir(path: str | Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder with ``fill(tmp)`` under a hidden temporary name, then rename it to ``path``.

    A reader sees the old complete folder, the new complete one, or (for the instant between two
    renames, when replacing) none -- never a mix; nothing of an old folder survives into the new
    one. If ``fill`` or the rename fails, the old folder is put back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        fill(tmp)
        moved = False
        if path.exists():
            os.replace(path, old)
            moved = True
        try:
            os.replace(tmp, path)
        except BaseException:
            if moved:  # put the previous complete folder back before giving up
                os.replace(old, path)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:  # a file or a link stood in the way
            old.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def write_artefact_files(folder: Path, kind: str, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> None:
    """``manifest.json`` + ``tensors.safetensors`` into an existing (temporary) folder."""
    body = {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        **manifest,
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()},
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / TENSORS))
    body = json.loads(json.dumps(body))  # as it will read back (tuples -> lists), so the checksum matches
    body["checksum"] = _checksum(body, folder / TENSORS)
    (folder / MANIFEST).write_text(json.dumps(body, indent=1, sort_keys=False), encoding="utf-8")


def _checksum(manifest: dict[str, Any], tensors_file: Path) -> str:
    """sha256 of the tensors file and of the manifest (less this field): a hand edit of either shows."""
    h = hashlib.sha256()
    with open(tensors_file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    rest = {k: v for k, v in manifest.items() if k != "checksum"}
    h.update(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return "sha256:" + h.hexdigest()


def save_artefact(path: str | Path, kind: str, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> Path:
    """Write ``path/manifest.json`` and ``path/tensors.safetensors`` atomically."""
    return atomic_replace_dir(path, lambda tmp: write_artefact_files(tmp, kind, tensors, manifest))


def read_manifest(path: str | Path, kind: str) -> dict[str, Any]:
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise ArtefactError(f"{path} is not a saved persona_gate folder (no such directory); check the path.")
    if not mpath.is_file():
        raise ArtefactError(f"{path} has no {MANIFEST}; the folder is incomplete, save it again.")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtefactError(f"{mpath} is corrupt ({e}); save the artefact again.") from None
    if not isinstance(manifest, dict) or "kind" not in manifest or "schema_version" not in manifest:
        raise ArtefactError(f"{mpath} lacks 'kind' or 'schema_version'; it was not written by persona_gate.")
    if manifest["kind"] != kind:
        raise ArtefactError(f"{path} holds a {manifest['kind']!r}, not a {kind!r}; load it with the matching class.")
    version = manifest["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise SchemaVersionError(
            f"{path} has schema version {version!r} but this persona_gate reads versions 1..{SCHEMA_VERSION}; "
            "upgrade persona_gate (pip install -U persona_gate)."
        )
    return manifest


def load_artefact(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check a folder written by :func:`save_artefact`."""
    path = Path(path)
    manifest = read_manifest(path, kind)
    tpath = path / TENSORS
    if not tpath.is_file():
        raise ArtefactError(f"{path} has no {TENSORS}; the folder is incomplete, save it again.")
    try:
        tensors = load_file(str(tpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtefactError(f"{tpath} is corrupt or truncated ({e}); save the artefact again.") from None
    if "checksum" in manifest and manifest["checksum"] != _checksum(manifest, tpath):
        raise ArtefactError(
            f"{path} was changed after it was saved (its manifest or tensors no longer match the checksum written "
            "with them, e.g. edited by hand); recompute the result and save it again."
        )
    expected = manifest.get("tensors", {})
    for key, meta in expected.items():
        if key not in tensors or list(tensors[key].shape) != meta["shape"]:
            raise ArtefactError(
                f"{tpath} does not match its manifest at {key!r}; the folder is inconsistent, save it again."
            )
    return manifest, tensors
