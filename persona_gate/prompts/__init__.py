"""Prompts: request and persona sets (``sets``), chat rendering with token spans (``chat``,
``templates``), position selectors (``positions``), multi-turn conversations (``conversation``)
and public benchmark loaders (``datasets``). Imports foundations only; runs no model.

The most used names, those of :mod:`~persona_gate.prompts.sets` (its ``__all__``), are importable
from here: ``from persona_gate.prompts import load_requests``.
"""

from .sets import *  # noqa: F403  (the package's public surface: sets.__all__)
