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

One module per concern, each importing only those before it: ``atomic`` (atomic writes, disk
errors, the temporaries' process names), ``folders`` (folder kinds, claiming an output folder),
``lock`` (the run-folder lock), ``artefacts`` (the manifest + safetensors folders) and
``records`` (:class:`Record`). Every name is re-exported here; a test that patches a module-level
name patches it where it is used (``persona_gate.io.atomic._write_file``, say).

Example::

    save_artefact("runs/x/directions", "direction_set", {"vectors": v}, {"name": "persona"})
    manifest, tensors = load_artefact("runs/x/directions", "direction_set")
    manifest["schema_version"]
"""

from __future__ import annotations

from .artefacts import SCHEMA_VERSION, TENSORS, load_artefact, read_manifest, save_artefact, write_artefact_files
from .atomic import (
    DISK_FULL_AT_WRITE,
    HOST,
    KILL_AT_WRITE,
    atomic_replace_dir,
    atomic_write_bytes,
    atomic_write_text,
    disk_error,
    disk_errors,
    process_alive,
    process_start,
    remove_stale_temporaries,
)
from .folders import (
    FOLDER_KINDS,
    FOLDER_MARK,
    MANIFEST,
    check_claimable,
    check_replaceable,
    claim_folder,
    describe_folder,
    folder_kind,
    json_keys,
    manifest_kind,
    register_folder_kind,
)
from .lock import LOCK, FolderLock
from .records import Record

__all__ = [
    "DISK_FULL_AT_WRITE",
    "FOLDER_KINDS",
    "FOLDER_MARK",
    "HOST",
    "KILL_AT_WRITE",
    "LOCK",
    "MANIFEST",
    "SCHEMA_VERSION",
    "TENSORS",
    "FolderLock",
    "Record",
    "atomic_replace_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_claimable",
    "check_replaceable",
    "claim_folder",
    "describe_folder",
    "disk_error",
    "disk_errors",
    "folder_kind",
    "json_keys",
    "load_artefact",
    "manifest_kind",
    "process_alive",
    "process_start",
    "read_manifest",
    "register_folder_kind",
    "remove_stale_temporaries",
    "save_artefact",
    "write_artefact_files",
]
