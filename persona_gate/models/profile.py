"""Model profiles: which prompt sets, refusal phrases and attack vocabulary fit a model, decided once.

A model's defaults are a property of the model, carried with it. :func:`load_chat_model
<persona_gate.models.loading.load_chat_model>` resolves the profile once and attaches it to the
model; every module that needs a model-specific default asks :func:`profile_of`, and nothing else
in persona_gate asks which model it is.

Where a profile comes from, first match wins:

1. the one passed to ``load_chat_model(..., profile=...)`` or set later with :func:`set_profile`;
2. the model's own folder: a ``persona_gate_profile.json`` beside its weights (the bundled
   organism declares its own this way, so a copy of its folder loaded by path, or a model booted
   from that folder without persona_gate's loader, behaves the same);
3. the open-vocabulary defaults: persona_gate's English prompt sets under ``data/``, refusal
   tokens derived from the model's own refusals, the open attack templates.

The profile file names its prompt sets and its fine-tuner by registered names (``"open"``,
``"organism"``) -- data, not code -- and lists its refusal phrases and attack templates as plain
JSON. Whoever defines prompt sets or a fine-tuner registers them here
(:func:`register_prompt_sets`, :func:`register_finetuner`); a profile lists the modules that do so
(``modules``), imported before its names are resolved, so this module knows no model family's code.

Example::

    profile = profile_of(model)                   # ModelProfile(name='organism', ...)
    profile.prompt_sets.requests("harmful", "test", 16, 0)
    set_profile(model, ModelProfile(name="mine", refusal_phrases=("I won't",)))
    finetuner_of(model).route                     # 'full weights': how a copy of it is fine-tuned
    finetuner_of(model).source(model)             # what a copy of it is fine-tuned from
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import ArtefactError, ConfigError
from ..prompts.sets import OPEN_SETS, PromptSets

PROFILE_FILE = "persona_gate_profile.json"
PROFILE_KIND = "persona_gate.model_profile"
SCHEMA = 1

# Named prompt sets a profile file may ask for, by their ``name``; others register with register_prompt_sets.
PROMPT_SETS: dict[str, PromptSets] = {"open": OPEN_SETS}


@runtime_checkable
class Finetuner(Protocol):
    """How a copy of a model is fine-tuned: what the screening validation asks of the model's profile.

    ``datasets`` builds the validation datasets from the model's own training stream: name ->
    (chats as message lists, whether each answers a refusal away); ``source`` says what a copy of a
    loaded model is fine-tuned from (its weights folder, or the packaged name it was loaded by), so
    no caller decides that from the model's name; ``fit`` fine-tunes a copy of ``source`` on chat
    examples into ``out``; ``route`` says how, in words, for the record.
    """

    name: str
    route: str

    def source(self, model: Any) -> str: ...

    def datasets(
        self, n_examples: int, seed: int, fractions: Sequence[float]
    ) -> dict[str, tuple[list[list[dict[str, str]]], list[bool]]]: ...

    def fit(
        self, source: str, examples: Sequence[Any], out: Path, *, seed: int, steps: int, batch_size: int
    ) -> None: ...


# Fine-tuners a profile may name, registered with register_finetuner by the module that defines them.
FINETUNERS: dict[str, Finetuner] = {}


def register_prompt_sets(sets: PromptSets) -> PromptSets:
    """Let profile files name ``sets`` by ``sets.name``; returns ``sets``."""
    if not isinstance(sets, PromptSets) or not isinstance(getattr(sets, "name", None), str):
        raise ConfigError(f"register named PromptSets (with a .name), not a {type(sets).__name__}.")
    PROMPT_SETS[sets.name] = sets
    return sets


def register_finetuner(finetuner: Finetuner) -> Finetuner:
    """Let profiles name ``finetuner`` by ``finetuner.name``; returns it."""
    if not isinstance(finetuner, Finetuner):
        raise ConfigError(
            f"a fine-tuner needs name, route, datasets(), source() and fit(); got a {type(finetuner).__name__}."
        )
    FINETUNERS[finetuner.name] = finetuner
    return finetuner


def import_modules(modules: Sequence[str], where: str = "the profile") -> None:
    """Import the modules a profile lists (they register its named prompt sets and fine-tuner)."""
    for module in modules:
        if not isinstance(module, str) or not module.startswith("persona_gate."):
            raise ArtefactError(f"{where} lists module {module!r}; a profile may only name persona_gate's own modules.")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ArtefactError(
                f"{where} lists module {module!r}, which cannot be imported ({e}); fix or delete it."
            ) from None


_ATTR = "_persona_gate_profile"


@dataclass(frozen=True)
class ModelProfile:
    """A model's defaults.

    ``prompt_sets``: where requests and personas come from (any :class:`PromptSets`).
    ``refusal_phrases``: phrases whose first tokens count as refusal; None = derive them from the
    model's own refusals of harmful training requests. ``attacks``: red-team templates as dicts
    (``name``, ``family``, ``user``, optional ``system``); None = the open-vocabulary ones.
    ``finetuner``: the registered :class:`Finetuner` that fine-tunes a copy (None = none known);
    ``modules``: the persona_gate modules that register this profile's named sets and fine-tuner.
    """

    name: str = "open"
    prompt_sets: PromptSets = field(default=OPEN_SETS, compare=False)
    refusal_phrases: tuple[str, ...] | None = None
    attacks: tuple[Mapping[str, Any], ...] | None = None
    finetuner: str | None = None
    modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a model profile needs a non-empty name, got {self.name!r}.")
        if not isinstance(self.prompt_sets, PromptSets):
            raise ConfigError(
                f"prompt_sets must offer requests(kind, split, n, seed) and personas(family, split, seed); got a "
                f"{type(self.prompt_sets).__name__}. Pass persona_gate.prompts.OPEN_SETS or your own object."
            )
        if self.refusal_phrases is not None:
            phrases = tuple(self.refusal_phrases)
            if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
                raise ConfigError("refusal_phrases must be non-empty strings (or None to derive them from the model).")
            object.__setattr__(self, "refusal_phrases", phrases)
        if self.attacks is not None:
            object.__setattr__(self, "attacks", tuple(dict(a) for a in self.attacks))
        if self.finetuner is not None and (not isinstance(self.finetuner, str) or not self.finetuner):
            raise ConfigError(f"finetuner must name a registered fine-tuner (or be None), got {self.finetuner!r}.")
        object.__setattr__(self, "modules", tuple(self.modules))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": PROFILE_KIND,
            "schema": SCHEMA,
            "name": self.name,
            "prompt_sets": getattr(self.prompt_sets, "name", "custom"),
            "refusal_phrases": None if self.refusal_phrases is None else list(self.refusal_phrases),
            "attacks": None if self.attacks is None else [dict(a) for a in self.attacks],
            "finetuner": self.finetuner,
            "modules": list(self.modules),
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``persona_gate_profile.json`` into a model folder (atomically)."""
        from ..io import atomic_write_text

        data = self.to_dict()
        if data["prompt_sets"] not in PROMPT_SETS:
            raise ConfigError(
                f"prompt sets {data['prompt_sets']!r} have no registered name, so a profile file cannot "
                f"refer to them; use one of {sorted(PROMPT_SETS)} or pass the profile to load_chat_model instead."
            )
        path = Path(folder) / PROFILE_FILE
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")
        return path


DEFAULT_PROFILE = ModelProfile()


def named_prompt_sets(name: str) -> PromptSets:
    """The registered prompt sets ``name`` (``open``, or ``organism`` once the organism's module is imported)."""
    if name not in PROMPT_SETS:
        raise ConfigError(
            f"unknown prompt sets {name!r}; a profile may name one of {sorted(PROMPT_SETS)} (others register "
            "when the module the profile lists under 'modules' is imported)."
        )
    return PROMPT_SETS[name]


def profile_from_dict(data: Mapping[str, Any], where: str = "the profile") -> ModelProfile:
    if not isinstance(data, Mapping) or data.get("kind") != PROFILE_KIND:
        kind = data.get("kind") if isinstance(data, Mapping) else type(data).__name__
        raise ArtefactError(f"{where} is not a persona_gate model profile (kind {kind!r}).")
    try:
        schema = int(data.get("schema", 0))
    except (TypeError, ValueError):
        raise ArtefactError(f"{where} has schema {data.get('schema')!r}, not a number; fix or delete it.") from None
    if schema > SCHEMA:
        raise ArtefactError(f"{where} has schema {schema}, newer than {SCHEMA}; upgrade persona_gate.")
    modules = data.get("modules") or []
    if not isinstance(modules, list):
        raise ArtefactError(f"{where} is malformed (modules must be a list of module names); fix or delete it.")
    import_modules(modules, where)
    try:
        return ModelProfile(
            name=str(data["name"]),
            prompt_sets=named_prompt_sets(str(data.get("prompt_sets", "open"))),
            refusal_phrases=None if data.get("refusal_phrases") is None else tuple(data["refusal_phrases"]),
            attacks=None if data.get("attacks") is None else tuple(data["attacks"]),
            finetuner=data.get("finetuner"),
            modules=tuple(modules),
        )
    except (KeyError, TypeError, ValueError) as e:  # ConfigError of a bad field, too
        raise ArtefactError(f"{where} is malformed ({e}); fix or delete it.") from None


def profile_in_folder(folder: str | Path | None) -> ModelProfile | None:
    """The profile a model folder declares (``persona_gate_profile.json``), or None."""
    if folder is None:
        return None
    path = Path(folder) / PROFILE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{path} cannot be read as JSON ({e}); fix or delete it.") from None
    return profile_from_dict(data, str(path))


def set_profile(model: Any, profile: ModelProfile) -> Any:
    """Attach ``profile`` to ``model`` (it then decides every default); returns the model."""
    if not isinstance(profile, ModelProfile):
        raise ConfigError(f"expected a ModelProfile, got a {type(profile).__name__}; build one with ModelProfile(...).")
    try:
        object.__setattr__(model, _ATTR, profile)
    except (AttributeError, TypeError):
        raise ConfigError(
            f"cannot attach a profile to a {type(model).__name__}; load the model with load_chat_model."
        ) from None
    return model


def profile_of(model: Any | None) -> ModelProfile:
    """The model's profile: attached, declared by its folder, or the open-vocabulary default."""
    if model is None:
        return DEFAULT_PROFILE
    attached = getattr(model, _ATTR, None)
    if isinstance(attached, ModelProfile):
        return attached
    from .adapter import weights_folder

    return profile_in_folder(weights_folder(model)) or DEFAULT_PROFILE


def finetuner_of(model: Any) -> Finetuner:
    """The fine-tuner the model's profile names (for fine-tuning a copy of it), or a named error."""
    profile = profile_of(model)
    import_modules(profile.modules, f"the profile {profile.name!r}")
    if profile.finetuner is None:
        raise ConfigError(
            f"the model's profile {profile.name!r} names no fine-tuner, so persona_gate cannot fine-tune a copy "
            "of it; pass the bundled organism, a copy of it, or a packaged chat model (gemma3-270m-chat)."
        )
    if profile.finetuner not in FINETUNERS:
        raise ConfigError(
            f"the model's profile names fine-tuner {profile.finetuner!r}, which no module registered; "
            f"registered: {sorted(FINETUNERS)}. List its module under the profile's modules."
        )
    return FINETUNERS[profile.finetuner]
