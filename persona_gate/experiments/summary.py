"""A pipeline run's ``summary.json`` as the text ``persona-gate run`` and ``demo`` print.

Reads the summary dict only (what :func:`~persona_gate.experiments.pipeline.run_pipeline`
returns, or the saved file): no model, no torch. Each feature keeps its ``format_*`` beside what
it formats; this is the pipeline's.

Example::

    import json
    import persona_gate as pg
    summary = json.loads(open("runs/demo/summary.json").read())
    print(pg.format_run_summary(summary, "runs/demo"))
"""

from __future__ import annotations

import os
from typing import Any

_VERDICTS = (
    ("steering", "persona steering removes refusal:"),
    ("reintroduction", "refusal added back, late not early:"),
    ("projection", "persona projected out beats random:"),
)


def _at(layer: int | None) -> str:
    return "no layer changes it" if layer is None else f"layer {layer}"


def format_run_summary(summary: dict[str, Any], out: str | os.PathLike) -> str:
    """The verdicts, gate window, refusal rates and timing of one run, one line each; ``out``: its folder."""
    lines = [f"model {summary['model']} ({summary['n_layers']} layers)"]
    if summary.get("reused_stages"):
        lines.append(
            f"  reused finished stages from {out}/: {', '.join(summary['reused_stages'])} (delete them to recompute)"
        )
    v, gw = summary["verdicts"], summary["gate_window"]
    for key, label in _VERDICTS:
        d = v[key]
        numbers = (
            "" if d["effect"] is None else f" (difference {d['effect']:+.2f}, 95% [{d['low']:+.2f}, {d['high']:+.2f}])"
        )
        lines.append(f"  {label:<38}{d['verdict']}{numbers}")
    where = "none found" if gw["start"] is None else f"layers {gw['start']}-{gw['end']} (from {gw['evidence']['from']})"
    lines.append(f"  gate window:                          {where}")
    lines.append(f"  refusal, safe persona + harmful:      {summary['baseline_refusal_rate']:.2f}")
    lines.append(f"  refusal, compliant persona + harmful: {summary['compliant_persona_refusal_rate']:.2f}")
    at = summary["steered_at"]
    lines.append(
        f"  refusal, persona steering (layer {at['layer']}, alpha {at['alpha']}): {summary['steered_refusal_rate']:.2f}"
    )
    lines.append(f"  refusal, harmless requests:           {summary['harmless_refusal_rate']:.2f}")
    back = ", ".join(f"{k}: {v:.2f}" for k, v in summary["reintroduction_refusal_by_layer"].items())
    lines.append(f"  refusal added back per layer:         {back}")
    best = max(summary["window_refusal"].items(), key=lambda kv: kv[1]["persona"])
    lines.append(f"  best persona window {best[0]}: {best[1]['persona']:.2f} (random max {best[1]['random_max']:.2f})")
    lines.append(f"  gate layers (patching >= 0.5):        {summary['gate_layers'] or 'none'}")
    for pos, row in (summary.get("extraction_sites") or {}).get("positions", {}).items():
        lines.append(
            f"  persona read at {pos + ':':<22}steers refusal to {row['steering_refusal']:.2f} ({_at(row['steering_layer'])}), "
            f"ablated restores {row['ablation_refusal']:.2f} ({_at(row['ablation_layer'])})"
        )
    lines.append(f"  {summary['seconds'].get('total', 0):.1f} s; results in {out}/ (summary.json)")
    return "\n".join(lines)


__all__ = ["format_run_summary"]
