"""One owner per folder: a lock file naming the process that writes there.

A run folder holds ``.persona_gate.lock`` while a run writes it: the owner's pid, host and start
time, created whole and exclusively. A second owner is refused with a
:class:`~persona_gate.errors.FolderLockedError` naming the first; the lock of a process that has
ended on this host (a run killed with SIGKILL, say) is stale and taken over with a warning.

Example::

    with FolderLock("runs/x", "a paper run"):
        ...  # a second FolderLock("runs/x").acquire() elsewhere raises FolderLockedError
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import FolderLockedError
from . import atomic  # its writer tags and file writer, looked up on use: a fault injected there reaches the lock
from .atomic import HOST, disk_errors, process_alive, process_start

log = logging.getLogger(__package__)  # "persona_gate.io", the logger the lock warned on before io was a package

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
        tmp = self.folder / f"{LOCK}.tmp-{atomic._writer_tag()}"
        try:
            with disk_errors(self.folder, len(data)):
                self.folder.mkdir(parents=True, exist_ok=True)
                atomic._write_file(tmp, data)
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

    def check(self) -> None:
        """Raise :class:`~persona_gate.errors.FolderLockedError` now if a live process holds the folder;
        takes nothing and changes nothing (a stale lock is left for :meth:`acquire` to take over).
        A command checks this before it loads a model, and acquires the lock after its inputs are checked."""
        owner = _read_lock(self.path)
        if owner:
            self._refuse_live(owner)

    def _refuse_live(self, owner: dict[str, Any]) -> None:
        """Raise for a live owner, or one on another host (which cannot be checked)."""
        here = owner.get("host") == HOST
        if owner and (not here or process_alive(owner.get("pid"), owner.get("started"))):
            where = "" if here else f"; if that process is no longer running, delete {self.path}"
            raise FolderLockedError(
                f"{self.folder} is in use by another {self.what} ({_describe_owner(owner)}); wait for it to "
                f"finish, or use another --out folder{where}."
            )

    def _refuse_or_clear(self, owner: dict[str, Any]) -> None:
        """Raise for a live owner (or one on another host, which cannot be checked); set a dead one's lock aside."""
        if not owner:  # unreadable: give a writer without hard links a moment to fill it
            time.sleep(0.2)
            owner = _read_lock(self.path)
            if owner is None:
                return
        self._refuse_live(owner)
        aside = self.folder / f"{LOCK}.old-{atomic._writer_tag()}"
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
