"""Saved artefacts: a folder of ``manifest.json`` + ``tensors.safetensors``, written atomically.

The manifest carries the artefact's ``kind``, a ``schema_version``, the tensors' shapes and the
provenance; the tensors go to safetensors (no pickle is ever loaded). A folder is written next to
its destination under a temporary name and renamed into place, so a reader never sees a
half-written file: the old complete folder, the new complete one, or (for the instant between
two renames, when replacing) none; a failed replace puts the old folder back.

Faults a user meets land here too. A full disk or a spent quota (ENOSPC, EDQUOT) while writing
is a :class:`~persona_gate.errors.DiskFullError` naming the folder and the size being written; a
read-only disk (EROFS) an :class:`~persona_gate.errors.OutputNotWritableError`; either way the
temporary is removed and the previous complete file stays. Temporaries are named after the process
that writes them (``.NAME.tmp-PID.HOST-XXXXXXXX``) and only those of a dead process are ever
tidied away. A folder one process owns (a run folder) holds a lock file naming its owner
(:class:`FolderLock`); a second owner is refused, a dead owner's lock is taken over.

Small JSON documents (a run's ``summary.json``, a cost plan, a screening validation) are typed
:class:`Record` s: frozen dataclasses with ``to_dict``/``from_dict`` and ``to_json``/``from_json``,
a ``schema_version`` in every document they write, and a read-only mapping over their JSON form
(``summary["baseline_refusal_rate"]``), so code written against the plain dicts keeps working.

Example::

    save_artefact("runs/x/directions", "direction_set", {"vectors": v}, {"name": "persona"})
    manifest, tensors = load_artefact("runs/x/directions", "direction_set")
    manifest["schema_version"]
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from safetensors import SafetensorError

if TYPE_CHECKING:  # torch loads when tensors are saved or read, so registering a folder kind stays cheap
    import torch

from .errors import (
    ArtefactError,
    DiskFullError,
    FolderLockedError,
    OutputExistsError,
    OutputNotWritableError,
    PersonaGateError,
    SchemaVersionError,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"


# --- Writers: every temporary names the process writing it; full and read-only disks are named errors ---

HOST = socket.gethostname()
_HOST_TAG = hashlib.sha256(HOST.encode()).hexdigest()[:6]
_TEMP = re.compile(r"\.(?:tmp|old)-(\d+)\.([0-9a-f]{6})-[0-9a-f]{8}$")  # the end of a temporary's name
_FULL = {errno.ENOSPC, errno.EDQUOT}


def _writer_tag() -> str:
    """``PID.HOST-XXXXXXXX``: a temporary's name says which process on which host writes it."""
    return f"{os.getpid()}.{_HOST_TAG}-{uuid.uuid4().hex[:8]}"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """A process's state letter and start time (clock ticks after boot) from /proc; None without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text.rsplit(")", 1)[-1].split()  # the command name in parentheses may hold spaces
    return (rest[0], rest[19]) if len(rest) > 19 else None


def process_start(pid: int | None = None) -> str | None:
    """When process ``pid`` (default: this one) started, as /proc records it (None where unknown): with
    the pid it names one process, even after the pid is reused."""
    stat = _proc_stat(os.getpid() if pid is None else pid)
    return stat[1] if stat else None


def process_alive(pid: object, started: object = None) -> bool:
    """Whether process ``pid`` runs on this host (and, given ``started``, is the one that started then)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True
    return stat[0] not in ("Z", "X") and (started is None or stat[1] == started)


def _size(n: int | float) -> str:
    """Bytes in words: 512 B, 1.2 KB, 3.4 GB."""
    unit = "B"
    for bigger in ("KB", "MB", "GB", "TB"):
        if n < 1000:
            break
        n, unit = n / 1000, bigger
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def disk_error(folder: Path, e: OSError, size: int | None = None) -> PersonaGateError | None:
    """The named error for ``e`` met writing into ``folder`` (``size`` bytes when known): a full disk or
    spent quota, a read-only disk; None for any other error."""
    meaning = f"{os.strerror(e.errno)} ({errno.errorcode.get(e.errno, e.errno)})" if e.errno else str(e)
    if e.errno in _FULL:
        try:
            free = f", {_size(shutil.disk_usage(folder).free)} free"
        except OSError:
            free = ""
        need = f"; {_size(size)} to write" if size is not None else ""
        full = DiskFullError(
            f"cannot write to {folder}: {meaning}{need}{free}. Free some space on that disk (or raise the quota) "
            "and run the same command again: everything saved so far is intact and the run resumes from it."
        )
        full.errno = e.errno  # handlers that test errno keep working; str() stays the one line
        return full
    if e.errno == errno.EROFS:
        return OutputNotWritableError(
            f"cannot write to {folder}: {meaning}; remount it writable or choose another output folder (--out). "
            "Nothing saved there was changed."
        )
    return None


@contextmanager
def disk_errors(folder: Path, size: int | None = None) -> Iterator[None]:
    """Inside the block, an OSError of a full or read-only disk becomes its named error (see :func:`disk_error`)."""
    try:
        yield
    except PersonaGateError:
        raise
    except (OSError, SafetensorError) as e:
        if isinstance(e, SafetensorError):  # safetensors writes files itself: "... (os error 28)"
            code = re.search(r"\(os error (\d+)\)", str(e))
            named = disk_error(Path(folder), OSError(int(code[1]), os.strerror(int(code[1]))), size) if code else None
        else:
            named = disk_error(Path(folder), e, size)
        if named is None:
            raise
        raise named from None


def remove_stale_temporaries(folder: Path, patterns: tuple[str, ...], *, owner: bool = False) -> int:
    """Remove the temporaries under ``folder`` (globs ``patterns``) that no live process is writing:
    those named after a process of this host that has ended. With ``owner`` (the caller holds the
    folder's :class:`FolderLock`, so no other run writes there) also those of other hosts and of
    unknown writers; never those of a live process here. Returns how many were removed."""
    removed = 0
    for stale in [p for pattern in patterns for p in folder.glob(pattern)]:
        m = _TEMP.search(stale.name)
        here = m is not None and m[2] == _HOST_TAG
        if (here and process_alive(int(m[1]))) or not (owner or here):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed += 1
    return removed


R = TypeVar("R", bound="Record")


class Record(Mapping[str, Any]):
    """Base of the typed JSON results: a frozen dataclass with one JSON form.

    A subclass writes ``_body()`` (its JSON form, keys in the order the file holds them) and
    ``_from_body(d)`` (the inverse). ``to_dict()`` is the body, plus ``"schema_version"`` (last)
    for a ``DOCUMENT``: a record written as a file of its own. A record nested in another one
    (a verdict in a summary) keeps its body unchanged, so the enclosing file is what it always was.
    ``from_dict`` accepts documents written before the version key existed (version 1) and
    refuses newer versions than this persona_gate reads. Reading it like a dict
    (``r["key"]``, ``r.get``, ``r.keys()``, ``in``, iteration) reads the JSON form; values come
    back as copies, so the record stays frozen.
    """

    SCHEMA_VERSION: ClassVar[int] = 1
    DOCUMENT: ClassVar[bool] = False

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_body(cls: type[R], d: dict[str, Any]) -> R:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (plain dicts, lists and scalars), as the file holds it."""
        return copy.deepcopy(self._form)

    @classmethod
    def from_dict(cls: type[R], d: Any) -> R:
        """The record of a JSON form (``Mapping``; anything else is an :class:`ArtefactError`)."""
        if isinstance(d, cls):
            return d
        if not isinstance(d, Mapping):
            raise ArtefactError(f"a {cls.__name__} is read from a JSON object, not {type(d).__name__}.")
        body = dict(d.to_dict() if isinstance(d, Record) else d)
        version = body.pop("schema_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= cls.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"this {cls.__name__} has schema version {version!r}, but this persona_gate reads versions "
                f"1..{cls.SCHEMA_VERSION}; upgrade persona_gate."
            )
        try:
            return cls._from_body(body)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, ArtefactError):
                raise
            raise ArtefactError(f"not a {cls.__name__} ({type(e).__name__}: {e}); write it again.") from None

    def to_json(self, indent: int | None = 1) -> str:
        """The JSON text, with ``schema_version`` (also for a nested record written on its own)."""
        d = self.to_dict()
        return json.dumps(d if self.DOCUMENT else {**d, "schema_version": self.SCHEMA_VERSION}, indent=indent)

    @classmethod
    def from_json(cls: type[R], text: str) -> R:
        return cls.from_dict(json.loads(text))

    @cached_property
    def _form(self) -> dict[str, Any]:
        # Written once per (frozen) record; cached_property sets the instance dict, not an attribute.
        body = json.loads(json.dumps(self._body()))  # canonical: tuples become lists
        return {**body, "schema_version": self.SCHEMA_VERSION} if self.DOCUMENT else body

    def __getitem__(self, key: str) -> Any:
        value = self._form[key]
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._form))

    def __len__(self) -> int:
        return len(self._form)

    def __contains__(self, key: object) -> bool:
        return key in self._form


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a file through a temporary sibling and ``os.replace`` (atomic on POSIX)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# Fault injection for the tests (never set it otherwise): "K" or "K:before" makes this process
# SIGKILL itself at its K-th atomic write, right after it lands ("K") or with only its temporary
# written ("K:before"), so a test kills a run at a chosen moment whatever the machine's load.
# DISK_FULL_AT_WRITE "K" makes the K-th atomic write and every later one fail as on a full disk
# (ENOSPC), with their temporary written.
KILL_AT_WRITE = "PERSONA_GATE_TEST_KILL_AT_WRITE"
DISK_FULL_AT_WRITE = "PERSONA_GATE_TEST_DISK_FULL_AT_WRITE"
_writes = 0


def _fault_point(stage: str) -> None:
    """Count an atomic write (at ``stage`` "after"); SIGKILL this process where :data:`KILL_AT_WRITE`
    says, or fail the write (at "before") where :data:`DISK_FULL_AT_WRITE` says."""
    global _writes
    if stage == "after":
        _writes += 1
    full = os.environ.get(DISK_FULL_AT_WRITE)
    if full and stage == "before" and _writes + 1 >= int(full):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    spec = os.environ.get(KILL_AT_WRITE)
    if not spec:
        return
    k, _, when = spec.partition(":")
    if (when or "after") == stage and _writes + (stage == "before") == int(k):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes through a temporary sibling and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{_writer_tag()}")
    try:
        with disk_errors(path.parent, len(data)):
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_file(tmp, data)
            _fault_point("before")
            os.replace(tmp, path)
        _fault_point("after")
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync one new file (the temporary of an atomic write)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_replace_dir(path: str | Path, fill: Callable[[Path], None], *, size: int | None = None) -> Path:
    """Build a folder with ``fill(tmp)`` under a hidden temporary name, then rename it to ``path``.

    A reader sees the old complete folder, the new complete one, or (for the instant between two
    renames, when replacing) none -- never a mix; nothing of an old folder survives into the new
    one. If ``fill`` or the rename fails, the old folder is put back. ``size`` (bytes, when known)
    is named if the disk turns out full.
    """
    path = Path(path)
    tag = _writer_tag()
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    old = path.parent / f".{path.name}.old-{tag}"
    try:
        with disk_errors(path.parent, size):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            fill(tmp)
            _fault_point("before")
            _swap_in(tmp, path, old)
        _fault_point("after")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _swap_in(tmp: Path, path: Path, old: Path) -> None:
    """Rename the finished folder ``tmp`` to ``path``, setting aside (then removing) what was there."""
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
    check_replaceable(path, lambda p: _manifest_kind(p) == kind, f"a saved {kind!r}")
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
    for key, meta in expected.items():
        if key not in tensors or list(tensors[key].shape) != meta["shape"]:
            raise ArtefactError(
                f"{tpath} does not match its manifest at {key!r}; the folder is inconsistent, save it again."
            )
    return manifest, tensors


# --- Output folders: every command writes into a folder that is new, empty or of its own kind ---

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


def _manifest_kind(path: Path) -> str | None:
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
        kind = _manifest_kind(path)
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


def claim_folder(path: str | Path, kind: str, *, written_by: str = "") -> Path:
    """Check, before any work, that ``path`` may receive a ``kind`` folder; create and mark it.

    Allowed: a new folder, an empty one, or one of the same kind (whose finished parts a run
    resumes from). Anything else -- a file, another kind of persona_gate folder, files of the
    user's -- is an :class:`~persona_gate.errors.OutputExistsError`; a folder that cannot be
    created or written is an :class:`~persona_gate.errors.OutputNotWritableError`. Both come
    before a model is loaded, so a bad ``--out`` fails in the first second.
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


# --- One owner per folder: a lock file naming the process that writes there ---

LOCK = ".persona_gate.lock"  # {"pid", "host", "since", "started", "token", "command"}


def _read_lock(path: Path) -> dict[str, Any] | None:
    """A lock file's owner, ``{}`` when unreadable (not one this package wrote whole), None when absent."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe_owner(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('since', '?')}"


class FolderLock:
    """Ownership of a folder through its lock file ``DIR/.persona_gate.lock`` (the owner's pid, host,
    start time; created whole and exclusively, by a hard link of a complete temporary).

    :meth:`acquire` takes the folder, or raises :class:`~persona_gate.errors.FolderLockedError`
    naming the live owner and what to do; a lock whose process has ended on this host (a run killed
    with SIGKILL, say) is stale and taken over with a warning. :meth:`release` removes the lock only
    if it is still this one's. Use it as a context manager: released on return, exception or Ctrl-C.

    Example::

        with FolderLock("runs/x", "a paper run"):
            ...  # a second FolderLock("runs/x").acquire() elsewhere raises FolderLockedError
    """

    def __init__(self, folder: str | Path, what: str = "persona-gate run") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.what = what
        self.token = uuid.uuid4().hex
        self.held = False

    def _record(self) -> bytes:
        import sys

        record = {
            "pid": os.getpid(),
            "host": HOST,
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "started": process_start(),
            "token": self.token,
            "command": " ".join(sys.argv)[:300],
        }
        return json.dumps(record, indent=1).encode("utf-8")

    def acquire(self) -> FolderLock:
        data = self._record()
        tmp = self.folder / f"{LOCK}.tmp-{_writer_tag()}"
        try:
            with disk_errors(self.folder, len(data)):
                self.folder.mkdir(parents=True, exist_ok=True)
                _write_file(tmp, data)
                for _ in range(20):  # each pass either takes the lock or clears a stale one
                    if self._create(tmp, data):
                        self.held = True
                        return self
                    owner = _read_lock(self.path)
                    if owner is None:
                        continue  # released in between: try again
                    self._refuse_or_clear(owner)
        finally:
            tmp.unlink(missing_ok=True)
        raise FolderLockedError(f"could not take the lock {self.path} (other runs keep taking it); try again.")

    def _create(self, tmp: Path, data: bytes) -> bool:
        """Create the lock file from the complete temporary, only if there is none; False if there is."""
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        try:  # a file system without hard links: create exclusively, then fill (not atomic)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _refuse_or_clear(self, owner: dict[str, Any]) -> None:
        """Raise for a live owner (or one on another host, which cannot be checked); set a dead one's lock aside."""
        if not owner:  # unreadable: give a writer without hard links a moment to fill it
            time.sleep(0.2)
            owner = _read_lock(self.path)
            if owner is None:
                return
        here = owner.get("host") == HOST
        if owner and (not here or process_alive(owner.get("pid"), owner.get("started"))):
            where = "" if here else f"; if that process is no longer running, delete {self.path}"
            raise FolderLockedError(
                f"{self.folder} is in use by another {self.what} ({_describe_owner(owner)}); wait for it to "
                f"finish, or use another --out folder{where}."
            )
        aside = self.folder / f"{LOCK}.old-{_writer_tag()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process cleared it first
        if _read_lock(aside) != owner:  # another process took the folder in between: put its lock back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            log.warning(
                "%s: taking over the lock of a %s that is no longer running (%s)",
                self.folder,
                self.what,
                _describe_owner(owner) if owner else "unreadable lock file",
            )
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file if it is still this one's (a taken-over stale lock is not)."""
        if self.held and (_read_lock(self.path) or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
