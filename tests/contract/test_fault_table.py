"""The fault table (docs/faults.md) is what this test sees: each fault provoked, what the user sees, what is kept.

Every row is produced here, on the command line in-process (``persona_gate.cli.main.main``): the
fault is provoked, the exit status and the one line on stderr are recorded (paths, pids, hosts
and times normalised), and what is kept is checked before the row is written. The committed
table must equal the rendering of these rows; ``PERSONA_GATE_WRITE_FAULT_TABLE=1 pytest
tests/contract/test_fault_table.py`` rewrites it. Faults that need a real process to die (SIGKILL)
or real memory pressure are covered by their own tests, named in the table's notes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch

import persona_gate as pg
from persona_gate.cli.main import main
from persona_gate.io import DISK_FULL_AT_WRITE, FolderLock

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "docs" / "faults.md"
HEADER = """# Faults a user meets, and what persona_gate does

Written by `tests/contract/test_fault_table.py` from what it provokes: each row's command was run,
its exit status and the one line it printed are shown as they came (paths, pids, hosts and times
replaced by placeholders), and what is kept was checked before the row was written. Faults that
need a process to die or real memory pressure have their own tests: SIGKILL at random writes
(`tests/experiments/test_faults.py`), two real processes into one folder
(`tests/experiments/test_folder_faults.py`), a real full tmpfs (`tests/test_io.py`).

| fault | command | exit | what the user sees | what is kept |
|---|---|---|---|---|
"""


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue().strip()


def _normalise(text: str, tmp: Path) -> str:
    text = text.replace(str(tmp), "DIR").replace(socket.gethostname(), "HOST")
    text = re.sub(r"pid \d+", "pid PID", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d( [A-Z]+)?", "TIME", text)
    return re.sub(r"[\d.]+ [KMG]?B", "N B", text)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    out: list[tuple[str, str, int, str, str]] = []

    def row(fault: str, argv: list[str], rc: int, err: str, kept: str) -> None:
        line = err.splitlines()[-1] if err else ""
        out.append(
            (fault, "persona-gate " + " ".join(_normalise(a, tmp) for a in argv), rc, _normalise(line, tmp), kept)
        )

    # Two runs into one folder: the second meets the first's lock before any work.
    cfg = tmp / "c.toml"
    cfg.write_text('model = "organism"\nn_fit = 8\nn_eval = 4\n')
    busy = tmp / "busy"
    with FolderLock(busy, "a paper run"):
        argv = ["run", "--config", str(cfg), "--out", str(busy), "--no-progress"]
        rc, err = _cli(argv)
        assert (busy / ".persona_gate.lock").exists()  # the owner's lock is untouched
    row("a second run into a folder in use", argv, rc, err, "the first run and its folder, untouched")

    # A full disk at the first write: a named line, nothing half-written.
    full = tmp / "full"
    os.environ[DISK_FULL_AT_WRITE] = "1"
    try:
        argv = ["directions", "--n", "4", "--out", str(full), "--no-progress"]
        rc, err = _cli(argv)
    finally:
        del os.environ[DISK_FULL_AT_WRITE]
    assert not any(p.name.startswith(".") and ".tmp" in p.name for p in full.rglob("*")) if full.exists() else True
    row("a full disk", argv, rc, err, "every file already saved (writes are atomic); the same command resumes")

    # A misspelt config key: refused before the model loads.
    bad = tmp / "bad.toml"
    bad.write_text('model = "organism"\nn_evl = 8\n')
    argv = ["run", "--config", str(bad), "--out", str(tmp / "never"), "--no-progress"]
    rc, err = _cli(argv)
    assert not (tmp / "never").exists()
    row("a misspelt config key", argv, rc, err, "nothing is written")

    # A layer the model lacks: refused (checked once the model is loaded) before the --out folder is made.
    argv = ["directions", "--layers", "1,99", "--out", str(tmp / "dirs"), "--no-progress"]
    rc, err = _cli(argv)
    assert not (tmp / "dirs").exists()
    row("a layer the model lacks", argv, rc, err, "nothing is written (the --out folder is never made)")

    # Truncated saved directions (a disk error, say): named, with the fix, before any work.
    model = pg.load_chat_model("organism")
    sites, d = pg.sites_for(model), int(model.cfg.d_model)
    g = torch.Generator().manual_seed(0)
    means = torch.randn(len(sites), d, generator=g), torch.randn(len(sites), d, generator=g)
    saved = pg.DirectionSet.from_means("persona", sites, *means, "compliant", "safe", {}, "mean:system").save(
        tmp / "dirs.saved"
    )
    tensors = next(saved.rglob("*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:40])
    argv = ["redteam", "--directions", str(saved), "--out", str(tmp / "rt"), "--no-progress"]
    rc, err = _cli(argv)
    assert not (tmp / "rt").exists()
    row("truncated saved directions", argv, rc, err, "nothing is written; the other saved folders still load")
    return out


def _render(rows: list[tuple[str, str, int, str, str]]) -> str:
    lines = [f"| {f} | `{c}` | {rc} | `{msg}` | {kept} |" for f, c, rc, msg, kept in rows]
    return HEADER + "\n".join(lines) + "\n"


def test_every_fault_is_one_line_and_exit_2(rows):
    for fault, _, rc, msg, _ in rows:
        assert rc == 2, (fault, msg)
        assert msg.startswith("persona-gate: error: ") and "Traceback" not in msg, (fault, msg)


def test_the_fault_table_is_what_the_faults_print(rows):
    text = _render(rows)
    if os.environ.get("PERSONA_GATE_WRITE_FAULT_TABLE"):
        TABLE.parent.mkdir(exist_ok=True)
        TABLE.write_text(text, encoding="utf-8")
    assert TABLE.read_text(encoding="utf-8") == text, (
        "docs/faults.md is stale; rerun with PERSONA_GATE_WRITE_FAULT_TABLE=1"
    )
    json.dumps(rows)  # the rows are plain data
