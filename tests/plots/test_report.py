"""The HTML report, opened in headless Chromium as a user would: no console errors, plots drawn.

Skipped where Debian's `chromium` is not installed (`.ci/run` installs it); the screenshot is kept
under test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html import escape as html_escape
from pathlib import Path

import pytest

from persona_gate.experiments.pipeline import DEMO, RunConfig, run_pipeline
from persona_gate.plots.report import write_report

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report_run")
    cfg = RunConfig.from_dict({**DEMO.__dict__, "n_fit": 24, "n_eval": 8, "alphas": [0.0, 4.0], "patch_examples": 2})
    run_pipeline(cfg, out, progress=False)
    return out


def test_report_is_self_contained_and_holds_every_figure(run_dir):
    html = write_report(run_dir).read_text()
    assert "<script src=" not in html  # plotly.js inlined: works offline
    assert html.count('class="plotly-graph-div"') == 5
    summary = json.loads((run_dir / "summary.json").read_text())
    statement = summary["gate_window"]["statement"]
    for text in (
        "Refusal, safe persona + harmful (baseline)",
        "Residual patching, layers restoring",
        "Activation patching",
        "Directional patching",
        statement[0].upper() + statement[1:],  # the gate in one line, each method's evidence under it
        *(label for label, _ in summary["gate_window"]["evidence"]["lines"]),
    ):
        assert html_escape(text) in html, text
    from importlib.metadata import version  # the footer records what reproduces the run

    assert (
        "seed 0;" in html
        and f"torch {version('torch')}" in html
        and f"transformer_lens {version('transformer_lens')}" in html
    )


def test_report_in_missing_stage_is_named(run_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    shutil.rmtree(partial / "window_projection")
    html = write_report(partial).read_text()
    assert "Stage <code>window_projection</code> has not finished" in html
    assert html.count('class="plotly-graph-div"') == 4


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    report = write_report(run_dir)
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,3200",
            "--virtual-time-budget=10000",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not [line for line in console if "error" in line.lower() or "Uncaught" in line], console
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report.png")
    img = Image.open(shot).convert("RGB")
    # The plots drew: the page holds many colours (a blank or text-only page holds a handful).
    colours = img.resize((300, 800)).getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 200
    # ... and coloured pixels (the heatmaps and curves), not just black text on white.
    px = list(img.resize((150, 400)).getdata())
    saturated = sum(1 for r, g, b in px if max(r, g, b) - min(r, g, b) > 60)
    assert saturated > 0.01 * len(px)  # a text-only page (the verdict colours alone) stays far below


def test_layer_lists_read_as_spans():
    from persona_gate.sites import describe_layers

    assert describe_layers([]) == "no layer" and describe_layers([5]) == "layer 5"
    assert (
        describe_layers([1, 2, 3, 7]) == "layers 1-3, 7" and describe_layers([9, 2, 4, 5, 6, 4]) == "layers 2, 4-6, 9"
    )
