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

import sys
import types
from typing import TYPE_CHECKING, Any

from .runtime import lazy_exports

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
    # the whole pipeline: its config, the run, its printed summary, figures and the HTML report
    "RunConfig": "experiments.pipeline",
    "DEMO": "experiments.pipeline",
    "run_pipeline": "experiments.pipeline",
    "format_run_summary": "experiments.summary",
    "figure_for": "plots.figures",
    "write_report": "plots.report",
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
    "agreement": "experiments.patching",
    # checkpoint comparison: persona drift between two checkpoints of one model
    "compare_checkpoints": "compare.checkpoints",
    "check_comparable": "compare.checkpoints",
    "refusal_rates": "compare.summary",
    "refusal_change": "compare.summary",
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
    "write_chat_jsonl": "screening.data",
    "format_screening": "screening.summary",
    "example_scores": "screening.summary",
    "organism_datasets": "screening.validation",
    "validate_screening": "screening.validation",
    "format_validation": "screening.summary",
    "Guard": "guard.intervention",
    "guard_grid": "guard.grid",
    "format_guard": "guard.summary",
    # the bundled organism, and the planted gate: a model whose gate layers are known by construction
    "organism_path": "organism.paths",
    "build_planted_gate": "organism.planted",
    "gate_window": "experiments.verdicts",
    "GateWindow": "experiments.verdicts",
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
    "organism_prompts": "organism.prompt_sets",
    "plots": "plots",
}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES) + ["__version__"]


# What static tools see: the same names as _EXPORTS and _SUBMODULES (tests/contract/test_api.py checks).
if TYPE_CHECKING:
    from . import errors, experiments, organism, plots
    from .compare.checkpoints import check_comparable, compare_checkpoints
    from .compare.summary import format_comparison, refusal_change, refusal_rates
    from .core.activations import ActivationStore, cache_activations, iter_activations
    from .core.contrasts import PersonaRefusal, fit_persona_and_refusal, format_summary, standard_prompts
    from .core.directions import DirectionFitter, DirectionSet, GroupMeans, fit_group_means
    from .core.generation import Generation, converse, generate
    from .core.interventions import Ablate, AddBack, Steer, apply
    from .errors import ConversationError
    from .experiments.patching import activation_patching, agreement, attribution_patching, gate_layers
    from .experiments.pipeline import DEMO, RunConfig, run_pipeline
    from .experiments.summary import format_run_summary
    from .experiments.verdicts import GateWindow, gate_window
    from .guard.grid import guard_grid
    from .guard.intervention import Guard
    from .guard.summary import format_guard
    from .models.adapter import check_supported
    from .models.loading import ModelInfo, load_chat_model, model_info, provenance
    from .models.profile import ModelProfile, profile_of, set_profile
    from .models.protocol import ChatModel
    from .monitoring.calibration import MonitorCalibration, calibrate, format_calibration
    from .monitoring.monitor import load_monitor_directions, monitor
    from .monitoring.summary import flagged_turns, format_monitor
    from .organism import prompt_sets as organism_prompts
    from .organism.finetune import finetune_toward_compliance
    from .organism.paths import organism_path
    from .organism.planted import build_planted_gate
    from .plots.compare_report import write_comparison_report
    from .plots.figures import figure_for
    from .plots.report import write_report
    from .prompts import datasets
    from .prompts.chat import RenderedPrompt, render, render_all
    from .prompts.conversation import Conversation
    from .prompts.positions import Position, parse_position
    from .prompts.sets import (
        ChatPrompt,
        Persona,
        Request,
        TraitSet,
        load_personas,
        load_requests,
        load_trait,
        no_system_persona,
        paired_grid,
        persona_grid,
    )
    from .redteam.attacks import Attack, attack_prompts, attacks_for
    from .redteam.harness import red_team
    from .redteam.result import RedTeamResult
    from .results import LabelledResult
    from .scoring import judges, labels, metrics, stats
    from .scoring.labels import label_response
    from .scoring.stats import auroc, wilson_interval
    from .screening.data import read_chat_jsonl, write_chat_jsonl
    from .screening.screen import screen
    from .screening.summary import example_scores, format_screening, format_validation
    from .screening.validation import organism_datasets, validate_screening
    from .sites import HookSite, parse_site, resolve, sites_for


class _Package(types.ModuleType):
    """The package's module type: importing a submodule never rebinds a root name of the same name.

    Python binds ``persona_gate.provenance`` (the foundation module) on the package the first time
    anything imports it; without this, ``pg.provenance`` (the function of ``models.loading``)
    would become the module then. The module stays reachable as ``from persona_gate.provenance import ...``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
