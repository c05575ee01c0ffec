"""Saved artefacts: a folder of ``manifest.json`` + ``tensors.safetensors``, written atomically.

The manifest carries the artefact's ``kind``, a ``schema_version``, the tensors' shapes, the
provenance and a sha256 of the tensors and of itself; the tensors go to safetensors (no pickle is
ever loaded). The folder is built under a temporary name and renamed into place
(:func:`~persona_gate.io.atomic.atomic_replace_dir`); reading it back checks the kind, the
version, the checksum and every tensor's shape.

Example::

    save_artefact("runs/x/directions", "direction_set", {"vectors": v}, {"name": "persona"})
    manifest, tensors = load_artefact("runs/x/directions", "direction_set")
    manifest["schema_version"]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

if TYPE_CHECKING:  # torch loads when tensors are saved or read, so registering a folder kind stays cheap
    import torch

from ..errors import ArtefactError, SchemaVersionError
from .atomic import atomic_replace_dir
from .folders import MANIFEST, check_replaceable, manifest_kind

SCHEMA_VERSION = 1
TENSORS = "tensors.safetensors"


def write_artefact_files(folder: Path, kind: str, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> None:
    """``manifest.json`` + ``tensors.safetensors`` into an existing (temporary) folder."""
    from safetensors.torch import save_file

    body = {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        **manifest,
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()
        },
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
    """Write ``path/manifest.json`` and ``path/tensors.safetensors`` atomically.

    ``path`` may be new, empty, or a saved ``kind`` (which is replaced); anything else there is
    an :class:`~persona_gate.errors.OutputExistsError`, before any file is written.
    """
    check_replaceable(path, lambda p: manifest_kind(p) == kind, f"a saved {kind!r}")
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    return atomic_replace_dir(path, lambda tmp: write_artefact_files(tmp, kind, tensors, manifest), size=size)


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
    if not isinstance(manifest, dict) or not isinstance(manifest.get("kind"), str) or "schema_version" not in manifest:
        raise ArtefactError(f"{mpath} lacks 'kind' or 'schema_version'; it was not written by persona_gate.")
    if manifest["kind"] != kind:
        raise ArtefactError(
            f"{path} holds a {manifest['kind']!r}, not a {kind!r}; load it with the matching class (or, if the folder was damaged, save it again)."
        )
    version = manifest["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise SchemaVersionError(
            f"{path} has schema version {version!r} but this persona_gate reads versions 1..{SCHEMA_VERSION}; "
            "upgrade persona_gate (pip install -U persona_gate)."
        )
    return manifest


def load_artefact(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check a folder written by :func:`save_artefact`."""
    from safetensors.torch import load_file

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
    if not isinstance(expected, dict) or not all(isinstance(m, dict) and "shape" in m for m in expected.values()):
        raise ArtefactError(
            f"{path / MANIFEST} has a damaged 'tensors' table; the folder is inconsistent, save it again."
        )
    for key, meta in expected.items():
        if key not in tensors or list(tensors[key].shape) != meta["shape"]:
            raise ArtefactError(
                f"{tpath} does not match its manifest at {key!r}; the folder is inconsistent, save it again."
            )
    return manifest, tensors
