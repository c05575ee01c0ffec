"""persona_gate: does a chat model's persona gate its refusal, and at which layers?

The public API, importable at no cost: names resolve lazily on first use, so ``import
persona_gate`` pulls in neither torch nor TransformerLens until something needs them. The
package's folders are its architecture (see the README's "Layout"): foundations (``errors``,
``sites``, ``io``, ``results``, ``provenance``), ``models`` (loading, the adapter, model
profiles), ``prompts``, ``core``, ``scoring``, ``experiments``, the applications ``monitoring``,
``redteam``, ``compare``, ``export``, ``screening`` and ``guard``, ``plots`` (figures and HTML reports), ``cli`` and ``organism``.

Example::

    import persona_gate as pg
    model = pg.load_chat_model("organism")
    print(pg.format_summary(pg.fit_persona_and_refusal(model)))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # models: loading, the adapter, model profiles
    "load_chat_model": "models.loading",
    "model_info": "models.loading",
    "ChatModel": "models.protocol",
    "ModelInfo": "models.loading",
    "ModelProfile": "models.profile",
    "profile_of": "models.profile",
    "set_profile": "models.profile",
    "check_supported": "models.adapter",
    # sites and positions
    "HookSite": "sites",
    "parse_site": "sites",
    "resolve": "sites",
    "sites_for": "sites",
    "Position": "prompts.positions",
    "parse_position": "prompts.positions",
    # prompts and chat rendering
    "ChatPrompt": "prompts.sets",
    "Persona": "prompts.sets",
    "Request": "prompts.sets",
    "TraitSet": "prompts.sets",
    "load_requests": "prompts.sets",
    "load_personas": "prompts.sets",
    "load_trait": "prompts.sets",
    "no_system_persona": "prompts.sets",
    "persona_grid": "prompts.sets",
    "paired_grid": "prompts.sets",
    "RenderedPrompt": "prompts.chat",
    "render": "prompts.chat",
    "render_all": "prompts.chat",
    # activations and directions
    "ActivationStore": "core.activations",
    "cache_activations": "core.activations",
    "iter_activations": "core.activations",
    "DirectionFitter": "core.directions",
    "DirectionSet": "core.directions",
    "GroupMeans": "core.directions",
    "fit_group_means": "core.directions",
    "PersonaRefusal": "core.contrasts",
    "fit_persona_and_refusal": "core.contrasts",
    "standard_prompts": "core.contrasts",
    "format_summary": "core.contrasts",
    "provenance": "models.loading",
    # interventions, generation, scoring, results
    "Steer": "core.interventions",
    "Ablate": "core.interventions",
    "AddBack": "core.interventions",
    "apply": "core.interventions",
    "generate": "core.generation",
    "Generation": "core.generation",
    "LabelledResult": "results",
    "label_response": "scoring.labels",
    "wilson_interval": "scoring.stats",
    # activation patching: where the persona's effect on refusal is carried
    "activation_patching": "experiments.patching",
    "attribution_patching": "experiments.patching",
    "gate_layers": "experiments.patching",
    # checkpoint comparison: persona drift between two checkpoints of one model
    "compare_checkpoints": "compare.checkpoints",
    "check_comparable": "compare.checkpoints",
    "format_comparison": "compare.summary",
    "write_comparison_report": "plots.compare_report",
    "finetune_toward_compliance": "organism.finetune",
    # red-teaming refusal: direct phrasings vs persona manipulation
    "Attack": "redteam.attacks",
    "attacks_for": "redteam.attacks",
    "attack_prompts": "redteam.attacks",
    "red_team": "redteam.harness",
    "RedTeamResult": "redteam.result",
    "auroc": "scoring.stats",
    # persona-drift monitor: persona/refusal projections per conversation turn, flagged
    "Conversation": "prompts.conversation",
    "ConversationError": "errors",
    "converse": "core.generation",
    "monitor": "monitoring.monitor",
    "flagged_turns": "monitoring.summary",
    "format_monitor": "monitoring.summary",
    "load_monitor_directions": "monitoring.monitor",
    "calibrate": "monitoring.calibration",
    "MonitorCalibration": "monitoring.calibration",
    "format_calibration": "monitoring.calibration",
    # screening fine-tuning data before it opens the gate; guarding the gate at inference
    "screen": "screening.screen",
    "read_chat_jsonl": "screening.data",
    "format_screening": "screening.summary",
    "Guard": "guard.intervention",
    "guard_grid": "guard.grid",
    "format_guard": "guard.summary",
}

# Submodules reachable as attributes (``pg.metrics.refusal_logodds``), under their old names too.
_SUBMODULES: dict[str, str] = {
    "errors": "errors",
    "experiments": "experiments",
    "datasets": "prompts.datasets",
    "metrics": "scoring.metrics",
    "judges": "scoring.judges",
    "labels": "scoring.labels",
    "stats": "scoring.stats",
    "organism": "organism",
    "plots": "plots",
}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'persona_gate' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
