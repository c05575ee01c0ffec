"""One self-contained HTML report for a run folder: the summary table and every figure.

The report is built from what the run saved (``summary.json`` and the stage folders) -- never
from a model -- and inlines plotly's JavaScript once, so the file works offline and can be mailed
around. Stages that are missing (a run still in progress) are listed as such.

Example::

    path = write_report("runs/demo")          # runs/demo/report.html
    # persona-gate report runs/demo
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ArtefactError
from ..io import atomic_write_text

FIGURE_STAGES = (
    ("steering_sweep", "Persona steering: refusal vs steering strength"),
    ("reintroduction", "Adding the refusal direction back, one layer at a time"),
    ("window_projection", "Projecting the persona direction out over windows of layers"),
    ("patching", "Activation patching: where the persona gates refusal"),
)

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1b1b1b; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 1rem 0; } td, th { padding: .3rem .8rem; border-bottom: 1px solid #ddd;
       text-align: left; vertical-align: top; } th { background: #f4f4f4; }
.num { font-variant-numeric: tabular-nums; text-align: right; }
.missing { color: #a33; } footer { color: #666; font-size: .85rem; margin-top: 3rem; }
"""


def html_page(title: str, body_parts: Iterable[str], seed: Any, versions: Mapping[str, Any]) -> str:
    """One persona_gate HTML page: head with ``title`` and the shared style, ``body_parts``, a footer.

    ``title`` is plain text (escaped here); ``body_parts`` are HTML fragments, joined one per line;
    the footer records ``seed`` and the package ``versions`` (``{name: version}``) that reproduce
    the numbers. Every persona_gate report (run, checkpoint comparison) is built with this shell.
    """
    footer_versions = ", ".join(f"{k} {v}" for k, v in versions.items())
    return "\n".join([
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        *body_parts,
        f"<footer>seed {html.escape(str(seed))}; {html.escape(footer_versions)}</footer>",
        "</body></html>",
    ])


def _rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    at = summary.get("steered_at", {})
    windows = summary.get("window_refusal", {})
    best = max(windows.items(), key=lambda kv: kv[1]["persona"]) if windows else None
    rows = [
        ("Model", f"{summary.get('model')} ({summary.get('n_layers')} layers, {summary.get('dtype')})"),
        ("Prompts per group", f"fit {summary['n_prompts_per_group']['fit']}, evaluate {summary['n_prompts_per_group']['eval']}"),
        ("Refusal, safe persona + harmful (baseline)", f"{summary['baseline_refusal_rate']:.2f}"),
        ("Refusal, compliant persona + harmful", f"{summary['compliant_persona_refusal_rate']:.2f}"),
        ("Refusal under persona steering", f"{summary['steered_refusal_rate']:.2f} (layer {at.get('layer')}, alpha {at.get('alpha')})"),
        ("Refusal, harmless requests", f"{summary['harmless_refusal_rate']:.2f}"),
        ("Refusal added back, by layer",
         ", ".join(f"{k}: {v:.2f}" for k, v in summary.get("reintroduction_refusal_by_layer", {}).items())),
    ]
    if best is not None:
        rows.append(("Best persona-projection window",
                     f"layers {best[0]}: {best[1]['persona']:.2f} (random controls: mean {best[1]['random_mean']:.2f}, max {best[1]['random_max']:.2f})"))
    rows.append(("Gate layers (patching restoration >= 0.5)", ", ".join(map(str, summary.get("gate_layers", []))) or "none"))
    return rows


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` for a run folder and return its path."""
    from . import figure_for
    from ..results import LabelledResult

    run_dir = Path(run_dir)
    spath = run_dir / "summary.json"
    if not spath.is_file():
        raise ArtefactError(
            f"{run_dir} has no summary.json; run `persona-gate run --out {run_dir}` (or demo) first."
        )
    summary = json.loads(spath.read_text(encoding="utf-8"))
    parts = [
        f"<h1>Does {html.escape(str(summary.get('model')))}'s persona gate its refusal?</h1>",
        "<p class='sub'>persona_gate report: refusal is the greedy first response token on held-out prompts.</p>",
        "<table><tr><th>Quantity</th><th>Value</th></tr>",
        *(f"<tr><td>{html.escape(k)}</td><td class='num'>{html.escape(v)}</td></tr>" for k, v in _rows(summary)),
        "</table>",
    ]
    import plotly.io as pio

    js_done = False
    for stage, title in FIGURE_STAGES:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        folder = run_dir / stage
        try:
            result = LabelledResult.load(folder)
        except ArtefactError:
            parts.append(f"<p class='missing'>Stage <code>{stage}</code> has not finished; re-run to complete it.</p>")
            continue
        fig = figure_for(result)
        # plotly.js once, inline: the report must work offline.
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=not js_done, default_width="100%"))
        js_done = True
    page = html_page(f"persona_gate report: {summary.get('model')}", parts, summary.get("seed"), summary.get("versions", {}))
    target = Path(out) if out is not None else run_dir / "report.html"
    atomic_write_text(target, page)
    return target
