"""Atomic writes: a file or a folder appears complete or not at all, and a full disk is a named error.

A file is written to a temporary sibling, fsynced and ``os.replace`` d into place; a folder is
built under a temporary name and renamed into place, so a reader never sees a half-written one:
the old complete folder, the new complete one, or (for the instant between two renames, when
replacing) none; a failed replace puts the old folder back.

A full disk or a spent quota (ENOSPC, EDQUOT) while writing is a
:class:`~persona_gate.errors.DiskFullError` naming the folder and the size being written; a
read-only disk (EROFS) an :class:`~persona_gate.errors.OutputNotWritableError`; either way the
temporary is removed and the previous complete file stays. Temporaries are named after the process
that writes them (``.NAME.tmp-PID.HOST-XXXXXXXX``) and only those of a dead process are ever
tidied away (:func:`remove_stale_temporaries`).

Example::

    atomic_write_text("runs/x/summary.json", json.dumps(summary))
    atomic_replace_dir("runs/x/model", lambda tmp: model.save_pretrained(tmp))
    with disk_errors(Path("runs/x"), size=n_bytes):  # ENOSPC here -> DiskFullError
        ...
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from ..errors import DiskFullError, OutputNotWritableError, PersonaGateError

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
