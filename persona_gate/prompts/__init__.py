"""Prompts: request and persona sets (``sets``), chat rendering with token spans (``chat``,
``templates``), position selectors (``positions``), multi-turn conversations (``conversation``)
and public benchmark loaders (``datasets``). Imports foundations only; runs no model.

The most used names are importable from here: ``from persona_gate.prompts import load_requests``.
"""

from .sets import (  # noqa: F401  (the package's public surface)
    OPEN_SETS,
    PERSONA_FAMILIES,
    REQUEST_KINDS,
    SPLITS,
    TRAITS,
    ChatPrompt,
    FilePromptSets,
    Persona,
    PromptSets,
    Request,
    TraitSet,
    data_dir,
    load_personas,
    load_requests,
    load_trait,
    no_system_persona,
    paired_grid,
    persona_grid,
)
