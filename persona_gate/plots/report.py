"""One self-contained HTML report for any result folder the CLI writes; for a run, the summary
table and every figure.

The report is built from what the run saved (``summary.json`` and the stage folders) -- never
from a model -- and inlines plotly's JavaScript once, so the file works offline and can be mailed
around. Stages that are missing (a run still in progress) are listed as such. The summary is read
as the JSON form of a :class:`~persona_gate.experiments.summary.RunSummary` (plots import no
experiment code; a RunSummary passed in reads the same way).

Example::

    path = write_report("runs/demo")          # runs/demo/report.html
    # persona-gate report runs/demo
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ArtefactError
from ..io import atomic_write_text
from .page import figure_html, html_page  # the page shell every report shares

# Result folders that other commands (``guard``, ``screen``) may write into a run folder beside the
# pipeline's stages: drawn when present, never reported missing.
EXTRA_FIGURES = (
    ("guard_grid", "Guarding the gate: persona bypass vs over-refusal under a persona cap and a random cap"),
    ("screening", "Screening fine-tuning data along the persona direction"),
)


def figure_stages(run_dir: Path, summary: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """The run's figure stages, in order: the pipeline stages its summary lists (the stage table,
    :data:`persona_gate.experiments.stages.STAGES`, recorded by the run; directions have their own
    report), then each extra result folder it holds. A summary written before runs recorded their
    stages: every result folder the run holds."""
    run_dir = Path(run_dir)
    if summary is None:
        spath = run_dir / "summary.json"
        summary = _read_json(spath) if spath.is_file() else {}
    listed = [(s["name"], s["title"]) for s in summary.get("stages", []) if s["name"] != "directions"]
    if not summary.get("stages"):
        listed = [
            (d.name, d.name.replace("_", " ")) for d in sorted(run_dir.iterdir()) if (d / "manifest.json").is_file()
        ]
    names = {n for n, _ in listed}
    return [*listed, *((s, t) for s, t in EXTRA_FIGURES if s not in names and (run_dir / s).is_dir())]


def _rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    at = summary.get("steered_at", {})
    windows = summary.get("window_refusal", {})
    best = max(windows.items(), key=lambda kv: kv[1]["persona"]) if windows else None
    rows = [
        ("Model", f"{summary.get('model')} ({summary.get('n_layers')} layers, {summary.get('dtype')})"),
        (
            "Prompts per group",
            f"fit {summary['n_prompts_per_group']['fit']}, evaluate {summary['n_prompts_per_group']['eval']}",
        ),
        ("Refusal, safe persona + harmful (baseline)", f"{summary['baseline_refusal_rate']:.2f}"),
        ("Refusal, compliant persona + harmful", f"{summary['compliant_persona_refusal_rate']:.2f}"),
        (
            "Refusal under persona steering",
            f"{summary['steered_refusal_rate']:.2f} (layer {at.get('layer')}, alpha {at.get('alpha')})",
        ),
        ("Refusal, harmless requests", f"{summary['harmless_refusal_rate']:.2f}"),
        (
            "Refusal added back, by layer",
            ", ".join(f"{k}: {v:.2f}" for k, v in summary.get("reintroduction_refusal_by_layer", {}).items()),
        ),
    ]
    if best is not None:
        rows.append(
            (
                "Highest persona-projection refusal (a window, not the gate)",
                f"layers {best[0]}: {best[1]['persona']:.2f} (random controls: mean {best[1]['random_mean']:.2f}, max {best[1]['random_max']:.2f})",
            )
        )
    rows.append(
        (
            "Residual patching, layers restoring >= 0.5 (cannot localise a read)",
            ", ".join(map(str, summary.get("gate_layers", []))) or "none",
        )
    )
    return rows


def _table(rows: Iterable[tuple[str, str]]) -> list[str]:
    return [
        "<table><tr><th>Quantity</th><th>Value</th></tr>",
        *(f"<tr><td>{html.escape(k)}</td><td class='num'>{html.escape(v)}</td></tr>" for k, v in rows),
        "</table>",
    ]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtefactError(f"{path} is missing; the folder is incomplete, run its command again.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtefactError(f"{path} is corrupt ({e}); run its command again.") from None
    if not isinstance(data, dict):
        raise ArtefactError(f"{path} is not a persona_gate summary; run its command again.")
    return data


_FINDINGS = (
    ("steering", "Steering toward the compliant persona removes refusal"),
    ("reintroduction", "Adding the refusal direction back restores refusal late, not early"),
    ("projection", "Projecting the persona direction out restores refusal; a random direction does not"),
)
_VERDICT_CSS = {"holds": "#1a7f37", "does not hold": "#b42318", "inconclusive": "#9a6700"}


def _verdict_parts(summary: Mapping[str, Any]) -> list[str]:
    """The answer first: each finding's verdict with its numbers, then the gate in one line with each
    method's evidence labelled under it."""
    v, gw = summary.get("verdicts"), summary.get("gate_window")
    if not v or not gw:
        return [
            "<p class='missing'>This run's summary predates verdicts; run it again (finished stages are reused) "
            "to get them.</p>"
        ]
    rows = ["<h2>Verdict</h2>", "<table><tr><th>Finding</th><th>Verdict</th><th>Evidence</th></tr>"]
    for key, title in _FINDINGS:
        d = v[key]
        colour = _VERDICT_CSS.get(d["verdict"], "#1b1b1b")
        rows.append(
            f"<tr><td>{html.escape(title)}</td><td style='color:{colour};font-weight:600'>{html.escape(d['verdict'])}"
            f"</td><td>{html.escape(d['reason'])}</td></tr>"
        )
    rows.append("</table>")
    if "statement" in gw:
        rows.append(f"<p><strong>{html.escape(gw['statement'][0].upper() + gw['statement'][1:])}.</strong></p>")
        items = "".join(
            f"<li>{html.escape(label)}: {html.escape(text)}</li>" for label, text in gw["evidence"].get("lines", [])
        )
        rows.append(f"<ul>{items}</ul><p class='sub'>{html.escape(gw['evidence'].get('rule', ''))}.</p>")
    else:  # a summary written before the gate rule
        where = "none found" if gw["start"] is None else f"layers {gw['start']}-{gw['end']}"
        rows.append(
            f"<p><strong>{html.escape(f'Gate: {where}; recorded before the localisation rule, re-run the run to apply it.')}</strong></p>"
        )
    return rows


def _run_page(run_dir: Path) -> tuple[str, list[str], Any, Mapping[str, Any]]:
    from ..results import LabelledResult
    from . import figure_for

    spath = run_dir / "summary.json"
    if not spath.is_file():
        raise ArtefactError(f"{run_dir} has no summary.json; run `persona-gate run --out {run_dir}` (or demo) first.")
    summary = _read_json(spath)
    missing = [k for k in ("n_prompts_per_group", "baseline_refusal_rate") if k not in summary]
    if missing:
        raise ArtefactError(
            f"{spath} lacks {missing}; it is not a finished run's summary. Run the run again to complete it."
        )
    parts = [
        f"<h1>Does the persona of {html.escape(str(summary.get('model')))} gate its refusal?</h1>",
        "<p class='sub'>persona_gate report: refusal is the greedy first response token on held-out prompts.</p>",
        *_verdict_parts(summary),
        "<h2>Numbers</h2>",
        *_table(_rows(summary)),
    ]
    js_done = False
    for stage, title in figure_stages(run_dir, summary):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        folder = run_dir / stage
        try:
            result = LabelledResult.load(folder)
        except ArtefactError:
            parts.append(f"<p class='missing'>Stage <code>{stage}</code> has not finished; re-run to complete it.</p>")
            continue
        parts.append(figure_html(figure_for(result), stage, js_done))
        js_done = True
    return f"persona_gate report: {summary.get('model')}", parts, summary.get("seed"), summary.get("versions", {})


def _directions_figure(rows: list[dict[str, Any]]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .theme import OKABE_ITO, TEMPLATE

    layers = [r["layer"] for r in rows]
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["raw direction norm (difference of means)", "cosine with the refusal direction"]
    )
    for i, (key, name) in enumerate([("refusal_norm", "refusal"), ("persona_norm", "persona")]):
        fig.add_trace(
            go.Scatter(
                x=layers, y=[r[key] for r in rows], name=name, mode="lines+markers", line={"color": OKABE_ITO[i]}
            ),
            row=1,
            col=1,
        )
    for i, (key, name) in enumerate(
        [("cos_persona_refusal", "persona (system mean)"), ("cos_persona_last_refusal", "persona (last token)")]
    ):
        fig.add_trace(
            go.Scatter(
                x=layers, y=[r[key] for r in rows], name=name, mode="lines+markers", line={"color": OKABE_ITO[i + 2]}
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="layer")
    fig.update_layout(template=TEMPLATE, height=380)
    return fig


def _directions_page(folder: Path) -> tuple[str, list[str], Any, Mapping[str, Any]]:
    summary = _read_json(folder / "summary.json")
    rows = summary.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ArtefactError(
            f"{folder}/summary.json has no per-layer rows; run `persona-gate directions --out {folder}` again."
        )
    counts = summary.get("counts", {})
    best = max(rows, key=lambda r: abs(r["cos_persona_refusal"]))
    table = [
        ("Model", str(summary.get("model"))),
        ("Layers", ", ".join(str(r["layer"]) for r in rows)),
        ("Prompts per group", ", ".join(f"{k} {v}" for k, v in counts.items()) or "n/a"),
        ("Largest |cos(persona, refusal)|", f"{best['cos_persona_refusal']:.3f} at layer {best['layer']}"),
    ]
    parts = [
        f"<h1>Persona and refusal directions of {html.escape(str(summary.get('model')))}</h1>",
        "<p class='sub'>persona_gate directions: difference of means per layer; the sets are saved beside this report.</p>",
        *_table(table),
        "<h2>Per layer</h2>",
        figure_html(_directions_figure(rows), "directions"),
    ]
    return f"persona_gate directions: {summary.get('model')}", parts, summary.get("seed"), summary.get("versions", {})


def _redteam_page(folder: Path) -> tuple[str, list[str], Any, Mapping[str, Any]]:
    from ..redteam.result import RedTeamResult
    from .redteam_figures import fig_red_team

    rt = RedTeamResult.load(folder / "red_team")
    s = rt.summary()
    parts = [
        f"<h1>Red team of {html.escape(str(s['model']))}: direct bypass phrasings vs persona manipulation</h1>",
        f"<pre>{html.escape(rt.format_table())}</pre>",
        figure_html(fig_red_team(rt), "red-team"),
    ]
    prov = rt.scores.provenance
    return f"persona_gate red team: {s['model']}", parts, prov.get("seed"), prov.get("versions", {})


def _monitor_page(folder: Path) -> tuple[str, list[str], Any, Mapping[str, Any]]:
    from ..monitoring.summary import format_monitor
    from ..results import LabelledResult
    from .monitor_figures import fig_monitor_timeline

    result = LabelledResult.load(folder / "monitor")
    model = result.provenance.get("model", {}).get("name")
    parts = [
        f"<h1>Persona-drift monitor: {html.escape(str(model))}</h1>",
        f"<pre>{html.escape(format_monitor(result))}</pre>",
        figure_html(fig_monitor_timeline(result), "monitor"),
    ]
    return f"persona_gate monitor: {model}", parts, result.provenance.get("seed"), result.provenance.get("versions", {})


def _screen_page(folder: Path) -> tuple[str, list[str], Any, Mapping[str, Any]]:
    from ..results import LabelledResult
    from ..screening.summary import format_screening
    from .defence_figures import fig_screening

    parts = ["<h1>Screening fine-tuning data: which examples push the persona toward compliance?</h1>"]
    prov: Mapping[str, Any] = {}
    if (folder / "screening").is_dir():
        res = LabelledResult.load(folder / "screening")
        prov = res.provenance
        parts += [
            f"<pre>{html.escape(format_screening(res, k=10))}</pre>",
            figure_html(fig_screening(res), "screening"),
        ]
    summary = _read_json(folder / "summary.json")
    if summary.get("validation"):
        from ..screening.summary import format_validation

        parts += [
            "<h2>Validation on organism fine-tunes</h2>",
            f"<pre>{html.escape(format_validation(summary['validation']))}</pre>",
        ]
    model = prov.get("model", {}).get("name") if prov else None
    return f"persona_gate screening: {model or 'validation'}", parts, prov.get("seed"), prov.get("versions", {})


def _guard_page(folder: Path) -> tuple[str, list[str], Any, Mapping[str, Any]]:
    from ..guard.summary import format_guard
    from ..results import LabelledResult
    from .defence_figures import fig_guard_grid

    res = LabelledResult.load(folder / "guard_grid")
    model = res.provenance.get("model", {}).get("name")
    rec = res.baselines["recommended"]
    verdict = (
        f"Recommended: cap layers {rec['window'][0]}-{rec['window'][1]} at percentile {rec['percentile']:g}: persona attacks "
        f"bypass {rec['persona_bypass']:.2f} (random-direction cap {rec['random_bypass']:.2f}), harmless requests refused "
        f"{rec['harmless_refusal']:.2f}."
    )
    parts = [
        f"<h1>Guarding the gate of {html.escape(str(model))}</h1>",
        f"<p class='verdict'>{html.escape(verdict)}</p>",
        f"<pre>{html.escape(format_guard(res))}</pre>",
        figure_html(fig_guard_grid(res), "guard"),
    ]
    return f"persona_gate guard: {model}", parts, res.provenance.get("seed"), res.provenance.get("versions", {})


_PAGES = {
    "run": _run_page,
    "directions": _directions_page,
    "redteam": _redteam_page,
    "monitor": _monitor_page,
    "screen": _screen_page,
    "guard": _guard_page,
}


def check_report_target(target: str | Path) -> Path:
    """Refuse, before any work, an ``--out`` that is a folder or a file persona_gate did not write."""
    from ..errors import OutputExistsError

    target = Path(target)
    if target.is_dir():
        raise OutputExistsError(f"{target} is a folder; give the report a file name such as {target / 'report.html'}.")
    if target.exists():
        with open(target, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
        if not (head.startswith("<!doctype html>") and "<title>persona_gate" in head):
            raise OutputExistsError(
                f"{target} exists and is not a persona_gate report; writing the report there would overwrite it. "
                "Choose another --out."
            )
    return target


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write one self-contained HTML report for any folder the CLI writes; returns its path.

    A run (``run``/``demo``), a ``directions --out`` folder, a red-team, monitor or comparison
    folder; anything else is an :class:`~persona_gate.errors.ArtefactError` that names what the
    folder holds. The report goes to ``folder/report.html`` unless ``out`` is given.
    """
    # The readers of the folders drawn here; importing them registers those folder kinds (their packages do).
    from ..compare.summary import format_comparison  # noqa: F401
    from ..guard.summary import format_guard  # noqa: F401
    from ..io import describe_folder, folder_kind
    from ..monitoring.summary import format_monitor  # noqa: F401
    from ..redteam.result import RedTeamResult  # noqa: F401
    from ..screening.summary import format_screening  # noqa: F401

    folder = Path(folder)
    if not folder.is_dir():
        raise ArtefactError(
            f"{folder} is not a folder; pass a folder written by persona-gate run, demo, directions, "
            "redteam, monitor, compare, screen or guard."
        )
    target = check_report_target(out if out is not None else folder / "report.html")
    kind = folder_kind(folder)
    if kind == "comparison":
        from .compare_report import write_comparison_report

        return write_comparison_report(folder / "comparison", target)
    page = _PAGES.get(kind or "")
    if page is None:
        hint = ""
        if kind is not None and kind.startswith("result:"):
            hint = f" For one saved result, draw it with persona_gate.plots.figure_for({str(folder)!r}), or pass the folder it is in."
        raise ArtefactError(
            f"{folder} holds {describe_folder(folder)}, which has no report; pass a folder written by persona-gate "
            f"run, demo, directions, redteam, monitor, compare, screen or guard.{hint}"
        )
    title, parts, seed, versions = page(folder)
    atomic_write_text(target, html_page(title, parts, seed, versions))
    return target
