"""One self-contained HTML report of a checkpoint comparison: refusal change, per-layer drift, figure.

Built from the saved (or returned) ``checkpoint_comparison`` result only -- never from a model --
with plotly's JavaScript inlined once, so the file opens offline.

Example::

    path = write_comparison_report(result, "runs/compare/report.html")
    path = write_comparison_report("runs/compare/comparison", "runs/compare/report.html")
    # persona-gate compare --model-a organism --model-b runs/compliant --out runs/compare
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

from ..compare.summary import as_comparison, refusal_rates
from ..io import atomic_write_text
from ..results import LabelledResult
from .page import figure_html, html_page  # one page shell (style, seed-and-versions footer) for every report

_LAYER_COLUMNS = (
    ("cos_persona", "cos persona", "b"),
    ("cos_refusal", "cos refusal", "b"),
    ("persona_norm", "|persona| A", "a"),
    ("persona_norm", "|persona| B", "b"),
    ("refusal_norm", "|refusal| A", "a"),
    ("refusal_norm", "|refusal| B", "b"),
    ("shift", "shift (system)", "b"),
    ("separation", "separation (system)", "b"),
    ("shift_last", "shift (last)", "b"),
    ("separation_last", "separation (last)", "b"),
)


def _num(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3f}"


def write_comparison_report(result: LabelledResult | str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the HTML report of ``result`` (or its saved folder) to ``out``; returns the path."""

    from .compare_figures import fig_checkpoint_comparison

    r = as_comparison(result)
    cfg = r.config
    name_a, name_b = html.escape(str(cfg.get("model_a"))), html.escape(str(cfg.get("model_b")))
    rates, flips = refusal_rates(r), r.baselines.get("flips", {})
    parts = [
        f"<h1>How far did {name_b} drift from {name_a}?</h1>",
        (
            f"<p class='sub'>A = {name_a} (reference), B = {name_b}. Directions fitted on {cfg.get('n_per_group')} "
            f"requests per group; shifts and refusal on {cfg.get('n_eval')} held-out prompts per group, the same for both. "
            f"Persona at {html.escape(str(cfg.get('persona_position')))}, refusal at "
            f"{html.escape(str(cfg.get('refusal_position')))}.</p>"
        ),
        "<h2>Refusal rate (greedy first response token, 95% Wilson interval)</h2>",
        "<table><tr><th>group</th><th>A</th><th>B</th><th>B − A</th><th>refused by A only / B only</th></tr>",
    ]
    for g, ra in rates["a"].items():
        rb, fl = rates["b"][g], flips.get(g, {})
        parts.append(
            f"<tr><td>{html.escape(g)}</td><td class='num'>{html.escape(str(ra))}</td><td class='num'>{html.escape(str(rb))}</td>"
            f"<td class='num'>{rb.rate - ra.rate:+.2f}</td>"
            f"<td class='num'>{fl.get('refused_a_only', '?')} / {fl.get('refused_b_only', '?')}</td></tr>"
        )
    parts += [
        "</table>",
        "<h2>Per layer</h2>",
        (
            "<p>cos: B's direction against A's. shift: where B puts safe-persona harmful requests along A's persona "
            "direction (0 = A's safe persona, 1 = A's compliant persona); separation: B's compliant − safe gap along it "
            "(A = 1). 'system' = mean over the system prompt, 'last' = the last prompt token.</p>"
        ),
        "<table><tr><th>layer</th>"
        + "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in _LAYER_COLUMNS)
        + "</tr>",
    ]
    by_ck = {ck: r.sel(checkpoint=ck) for ck in ("a", "b")}
    for i, layer in enumerate(r.coords["layer"]):
        cells = "".join(f"<td class='num'>{_num(float(by_ck[ck][v][i]))}</td>" for v, _, ck in _LAYER_COLUMNS)
        parts.append(f"<tr><td>{layer}</td>{cells}</tr>")
    parts += ["</table>", "<h2>Figure</h2>"]
    parts.append(figure_html(fig_checkpoint_comparison(r), "comparison"))
    title = f"persona_gate checkpoint comparison: {cfg.get('model_b')} vs {cfg.get('model_a')}"
    return atomic_write_text(Path(out), html_page(title, parts, cfg.get("seed"), r.provenance.get("versions", {})))
