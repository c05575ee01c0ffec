"""persona_gate's weight caches: file checksums remembered, and chat adapters merged once.

Two things make a cached load of ``gemma3-270m-chat`` cost seconds rather than ten:

* :func:`file_sha256` hashes a large file (the 250 MB GGUF the de-quantised cache is keyed by)
  once and remembers the checksum beside the file's size and modification time, under
  :func:`cache_dir` ``/sha256``. A file modified since gets hashed again; a file modified within
  the last few seconds is never remembered (two writes within one clock tick can share a
  modification time: git's "racy" rule), so a remembered checksum is never stale.
* :func:`write_merged` keeps the weights an adapter's merge produced (only the modules the
  adapter changes, in the model's dtype) in a safetensors file under :func:`merged_folder`, keyed
  by the adapter's sha256 and the base weights' key; :func:`read_merged` copies them back into a
  freshly loaded base (mapping the file, not copying it), bit for bit what merging again gives,
  without the float64 matmuls. A retrained adapter is another key; a damaged or mismatched file
  is ignored (and rewritten).

Every write is atomic (:mod:`persona_gate.io`); a cache that cannot be written (read-only home,
full disk) is skipped with a warning, never an error.

Example::

    file_sha256(Path("model.gguf"))            # hashed once, then read back
    folder = merged_folder(adapter_folder, base_key)
    if not read_merged(hf_model, folder, adapter_sha):
        ...merge...; write_merged(hf_model, folder, names, {"adapter_sha256": adapter_sha})
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

log = logging.getLogger(__name__)

MERGED_FILE = "merged.safetensors"
# A file modified this recently is hashed but its checksum not remembered (see the module docstring).
RACY_SECONDS = 3.0
_FORMAT = "1"  # of the merged file; another value is another cache
# A merge whose weights would take more than this is not kept (a 7B base's projections are tens
# of GB): it is merged at every load, as before. Gemma 3 270M's adapter keeps 0.4 GB in float32.
MERGED_MAX_BYTES = 2 * 2**30


def cache_dir() -> Path:
    """persona_gate's cache folder: ``$PERSONA_GATE_CACHE``, else ``$XDG_CACHE_HOME/persona_gate``, else
    ``~/.cache/persona_gate``."""
    if os.environ.get("PERSONA_GATE_CACHE"):
        return Path(os.environ["PERSONA_GATE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "persona_gate"


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _memo_path(path: Path) -> Path:
    return cache_dir() / "sha256" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of ``path``, hashed once per (size, modification time) and then read back."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    memo = _memo_path(path)
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        if {k: known.get(k) for k in stamp} == stamp and isinstance(known.get("sha256"), str):
            return known["sha256"]
    except (OSError, ValueError, AttributeError):
        pass  # not remembered yet, or unreadable: hash it
    digest = sha256_of(path)
    if time.time_ns() - st.st_mtime_ns >= RACY_SECONDS * 1e9:
        try:
            from ..io import atomic_write_text

            atomic_write_text(memo, json.dumps({**stamp, "sha256": digest}))
        except OSError as e:  # a read-only or full cache: hash again next time
            log.debug("could not remember the checksum of %s in %s (%s)", path, memo, e)
    return digest


def merged_folder(adapter_folder: Path, adapter_sha: str, base_key: str) -> Path:
    """Where the merge of the adapter in ``adapter_folder`` (sha256 ``adapter_sha``) into the base
    weights ``base_key`` (their file, checksum and dtype) is kept."""
    return cache_dir() / "merged" / f"{adapter_folder.name}-{adapter_sha[:16]}-{base_key}"


def read_merged(hf_model: Any, folder: Path, adapter_sha: str, names: list[str]) -> bool:
    """Put the merged weights kept in ``folder`` into ``hf_model`` (the base, freshly loaded);
    True when they were there and fit: every module of ``names``, shapes and dtypes the model's,
    written from the adapter ``adapter_sha``. False (``hf_model`` untouched) otherwise."""
    from safetensors import safe_open

    file = folder / MERGED_FILE
    if not file.is_file():
        return False
    modules = dict(hf_model.named_modules())
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            fits = (
                meta.get("format") == _FORMAT
                and meta.get("adapter_sha256") == adapter_sha
                and keys == {f"{n}.weight" for n in names}
                and all(n in modules and hasattr(modules[n], "weight") for n in names)
            )
            tensors = {n: f.get_tensor(f"{n}.weight") for n in names} if fits else {}
    except (SafetensorError, OSError) as e:
        log.warning("the merged-weights cache %s is unreadable (%s); merging the adapter again", folder, e)
        return False
    if not fits or any(
        t.shape != modules[n].weight.shape or t.dtype != modules[n].weight.dtype for n, t in tensors.items()
    ):
        log.warning("the merged-weights cache %s does not fit this adapter and base; merging again", folder)
        return False
    with torch.no_grad():
        for n, t in tensors.items():
            weight = modules[n].weight
            if weight.device == t.device:  # no copy: the file's pages, mapped privately as transformers maps the base's
                weight.data = t
            else:
                weight.copy_(t)
    return True


def write_merged(hf_model: Any, folder: Path, names: list[str], meta: dict[str, str]) -> None:
    """Keep the weights of the modules ``names`` of the merged ``hf_model`` in ``folder``, atomically;
    ``meta`` (``adapter_sha256`` at least) goes into the file's metadata. A cache that cannot be
    written is skipped with a warning."""
    from safetensors.torch import save_file

    from ..io import atomic_replace_dir

    modules = dict(hf_model.named_modules())
    tensors = {f"{n}.weight": modules[n].weight.detach().cpu().contiguous() for n in names}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    metadata = {**{k: str(v) for k, v in meta.items()}, "format": _FORMAT}
    try:
        atomic_replace_dir(folder, lambda tmp: save_file(tensors, str(tmp / MERGED_FILE), metadata=metadata), size=size)
    except (OSError, SafetensorError, ValueError) as e:
        log.warning("could not cache the merged weights in %s (%s); the next load merges again", folder, e)
