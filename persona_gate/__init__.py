"""persona_gate: does a chat model's persona gate its refusal, and at which layers?

The public API, importable at no cost: names resolve lazily on first use, so ``import
persona_gate`` pulls in neither torch nor TransformerLens until something needs them.

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
    # models
    "load_chat_model": "models",
    "model_info": "models",
    "ChatModel": "models",
    "ModelInfo": "models",
    # sites and positions
    "HookSite": "sites",
    "parse_site": "sites",
    "resolve": "sites",
    "sites_for": "sites",
    "Position": "positions",
    "parse_position": "positions",
    # prompts and chat rendering
    "ChatPrompt": "prompts",
    "Persona": "prompts",
    "Request": "prompts",
    "TraitSet": "prompts",
    "load_requests": "prompts",
    "load_personas": "prompts",
    "load_trait": "prompts",
    "no_system_persona": "prompts",
    "persona_grid": "prompts",
    "paired_grid": "prompts",
    "RenderedPrompt": "chat",
    "render": "chat",
    "render_all": "chat",
    # activations and directions
    "ActivationStore": "activations",
    "cache_activations": "activations",
    "iter_activations": "activations",
    "DirectionFitter": "directions",
    "DirectionSet": "directions",
    "GroupMeans": "directions",
    "fit_group_means": "directions",
    "PersonaRefusal": "contrasts",
    "fit_persona_and_refusal": "contrasts",
    "standard_prompts": "contrasts",
    "format_summary": "contrasts",
    "provenance": "provenance",
    # interventions, generation, scoring, results
    "Steer": "interventions",
    "Ablate": "interventions",
    "AddBack": "interventions",
    "apply": "interventions",
    "generate": "generation",
    "Generation": "generation",
    "LabelledResult": "results",
    "label_response": "labels",
    "wilson_interval": "labels",
    # checkpoint comparison: persona drift between two checkpoints of one model
    "compare_checkpoints": "compare",
    "check_comparable": "compare",
    "format_comparison": "compare",
    "write_comparison_report": "compare_report",
    "finetune_toward_compliance": "organism.finetune",
    # red-teaming refusal: direct phrasings vs persona manipulation
    "Attack": "attacks",
    "attacks_for": "attacks",
    "attack_prompts": "attacks",
    "red_team": "redteam",
    "RedTeamResult": "redteam",
    "auroc": "redteam",
    # persona-drift monitor: persona/refusal projections per conversation turn, flagged
    "Conversation": "conversation",
    "ConversationError": "conversation",
    "converse": "conversation",
    "monitor": "drift_monitor",
    "flagged_turns": "drift_monitor",
    "format_monitor": "drift_monitor",
    "load_monitor_directions": "drift_monitor",
    "calibrate": "monitor_calibration",
    "MonitorCalibration": "monitor_calibration",
    "format_calibration": "monitor_calibration",
}

_SUBMODULES = ("errors", "experiments", "datasets", "metrics", "judges", "labels", "organism")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'persona_gate' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
