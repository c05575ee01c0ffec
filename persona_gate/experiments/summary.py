"""A pipeline run's ``summary.json``: the typed :class:`RunSummary`, and the text ``persona-gate run`` and ``demo`` print.

:class:`RunSummary` is what :func:`~persona_gate.experiments.pipeline.run_pipeline` returns: a
frozen dataclass whose JSON form is ``summary.json`` key for key (plus ``schema_version``, last),
with the verdicts and the gate window typed (:class:`~persona_gate.experiments.verdicts.Verdicts`,
:class:`~persona_gate.experiments.verdicts.GateWindow`). It reads like that JSON
(``summary["baseline_refusal_rate"]``, ``summary.get("extraction_sites")``, ``"stages" in summary``)
and by attribute (``summary.baseline_refusal_rate``, ``summary.verdicts.steering.verdict``).
:func:`format_run_summary` reads the summary only (the record, or the saved file's dict): no model
runs. Each feature keeps its ``format_*`` beside what it formats; this is the pipeline's.

Example::

    import persona_gate as pg
    from persona_gate.experiments.summary import RunSummary
    summary = RunSummary.load("runs/demo")           # reads runs/demo/summary.json
    print(pg.format_run_summary(summary, "runs/demo"))
    summary.verdicts.projection.holds, summary["gate_window"]["start"]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArtefactError
from ..io import Record
from .verdicts import GateWindow, Verdicts

# The keys of summary.json in the order it holds them; those after "config" (and the verdicts and
# gate window, absent from runs that predate them) are written only when present.
_KEYS = (
    "model",
    "n_layers",
    "dtype",
    "n_prompts_per_group",
    "baseline_refusal_rate",
    "harmless_refusal_rate",
    "steered_refusal_rate",
    "steered_at",
    "compliant_persona_refusal_rate",
    "reintroduction_refusal_by_layer",
    "window_refusal",
    "verdicts",
    "gate_window",
    "gate_layers",
    "patching_by_layer",
    "direction_patching_by_layer",
    "cos_persona_refusal_by_layer",
    "seconds",
    "seed",
    "versions",
    "config",
    "extraction_sites",
    "reused_stages",
    "processes",
    "stages",
)
_OPTIONAL = (
    "verdicts",
    "gate_window",
    "direction_patching_by_layer",
    "extraction_sites",
    "reused_stages",
    "processes",
    "stages",
)


@dataclass(frozen=True)
class RunSummary(Record):
    """A run's headline numbers (``summary.json``; the keys are documented in the README), each
    traceable to a result folder. Refusal rates are shares of held-out prompts; per-layer maps are
    keyed by the layer as a string, per-window ones by ``"start-end"``. ``extra`` keeps keys a
    newer writer added, so reading and writing a summary never drops one."""

    DOCUMENT = True

    model: str
    n_layers: int
    dtype: str
    n_prompts_per_group: Mapping[str, int]
    baseline_refusal_rate: float
    harmless_refusal_rate: float
    steered_refusal_rate: float
    steered_at: Mapping[str, Any]
    compliant_persona_refusal_rate: float
    reintroduction_refusal_by_layer: Mapping[str, float]
    window_refusal: Mapping[str, Mapping[str, float]]
    verdicts: Verdicts | None
    gate_window: GateWindow | None
    gate_layers: Sequence[int]
    patching_by_layer: Sequence[Mapping[str, Any]]
    cos_persona_refusal_by_layer: Mapping[str, float]
    seconds: Mapping[str, float]
    seed: int
    versions: Mapping[str, Any]
    config: Mapping[str, Any]
    direction_patching_by_layer: Sequence[Mapping[str, Any]] | None = None
    extraction_sites: Mapping[str, Any] | None = None
    reused_stages: Sequence[str] | None = None
    processes: int | None = None
    stages: Sequence[Mapping[str, str]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def _body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in _KEYS:
            value = getattr(self, key)
            if value is None and key in _OPTIONAL:
                continue
            out[key] = value.to_dict() if isinstance(value, Record) else value
        return {**out, **self.extra}

    @classmethod
    def _from_body(cls, d: dict[str, Any]) -> RunSummary:
        missing = [k for k in _KEYS if k not in d and k not in _OPTIONAL]
        if missing:
            raise ArtefactError(f"this summary lacks {missing}; it is not a finished run's summary.json.")
        got = {k: d.get(k) for k in _KEYS}
        got["verdicts"] = None if got["verdicts"] is None else Verdicts.from_dict(got["verdicts"])
        got["gate_window"] = None if got["gate_window"] is None else GateWindow.from_dict(got["gate_window"])
        return cls(**got, extra={k: v for k, v in d.items() if k not in _KEYS})

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> RunSummary:
        """The summary a run wrote to ``run_dir/summary.json``."""
        path = Path(run_dir) / "summary.json"
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtefactError(
                f"{run_dir} has no summary.json; run `persona-gate run --out {run_dir}` first."
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ArtefactError(f"{path} is not valid JSON; run the run again to rewrite it.") from None
        except ArtefactError as e:
            raise ArtefactError(f"{path}: {e}") from None


_VERDICTS = (
    ("steering", "persona steering removes refusal:"),
    ("reintroduction", "refusal added back, late not early:"),
    ("projection", "persona projected out beats random:"),
)


def _at(layer: int | None) -> str:
    return "no layer changes it" if layer is None else f"layer {layer}"


def format_run_summary(summary: RunSummary | Mapping[str, Any], out: str | os.PathLike) -> str:
    """The verdicts, the gate (one line, each method's evidence labelled under it), refusal rates and
    timing of one run; ``out``: its folder.

    ``summary``: a :class:`RunSummary` or its JSON form (the saved file as a dict)."""
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
    if gw is not None:
        gate = GateWindow.from_dict(gw)
        lines.append(f"  {gate.statement}")
        for label, text in gate.evidence.get("lines", []):
            lines.append(f"    {label + ':':<48}{text}")
    lines.append(f"  refusal, safe persona + harmful:      {summary['baseline_refusal_rate']:.2f}")
    lines.append(f"  refusal, compliant persona + harmful: {summary['compliant_persona_refusal_rate']:.2f}")
    at = summary["steered_at"]
    lines.append(
        f"  refusal, persona steering (layer {at['layer']}, alpha {at['alpha']}): {summary['steered_refusal_rate']:.2f}"
    )
    lines.append(f"  refusal, harmless requests:           {summary['harmless_refusal_rate']:.2f}")
    back = ", ".join(f"{k}: {v:.2f}" for k, v in summary["reintroduction_refusal_by_layer"].items())
    lines.append(f"  refusal added back per layer:         {back}")
    for pos, row in (summary.get("extraction_sites") or {}).get("positions", {}).items():
        lines.append(
            f"  persona read at {pos + ':':<22}steers refusal to {row['steering_refusal']:.2f} ({_at(row['steering_layer'])}), "
            f"ablated restores {row['ablation_refusal']:.2f} ({_at(row['ablation_layer'])})"
        )
    lines.append(f"  {summary['seconds'].get('total', 0):.1f} s; results in {out}/ (summary.json)")
    return "\n".join(lines)


__all__ = ["RunSummary", "format_run_summary"]
