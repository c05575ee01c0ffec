"""Prompt sets and persona x request grids.

A *request* is what the user asks; a *persona* is the system prompt the model is given. The
paper's contrasts are grids of the two: refusal = harmful - harmless requests under one persona,
persona = compliant - safe personas over the same requests. persona_gate ships its own small,
generic sets under ``data/`` (no operational content); public benchmarks load through
:mod:`persona_gate.prompts.datasets`.

Example::

    harmful = load_requests("harmful", split="train")
    grid = persona_grid(load_personas("compliant"), harmful, group="compliant")
    print(grid[0].system, "|", grid[0].user)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from ..errors import DatasetError, EmptyGroupError
from ..resources import data_dir  # re-exported (__all__): the data folder is a foundation's concern

__all__ = [  # what persona_gate.prompts re-exports
    "OPEN_SETS",
    "PERSONA_FAMILIES",
    "REQUEST_KINDS",
    "SPLITS",
    "TRAITS",
    "ChatPrompt",
    "FilePromptSets",
    "Persona",
    "PromptSets",
    "Request",
    "TraitSet",
    "data_dir",
    "load_personas",
    "load_requests",
    "load_trait",
    "no_system_persona",
    "paired_grid",
    "persona_grid",
]

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUEST_KINDS: tuple[str, ...] = ("harmful", "harmless")
PERSONA_FAMILIES: tuple[str, ...] = ("compliant", "safe", "neutral")
TRAIT_PAIRS: tuple[tuple[str, str], ...] = (
    ("evil", "nurturing"),
    ("callous", "supportive"),
    ("hostile", "patient"),
    ("arrogant", "diplomatic"),
)
TRAITS: tuple[str, ...] = tuple(t for pair in TRAIT_PAIRS for t in pair)


@dataclass(frozen=True)
class Request:
    """One user request. ``harmful`` is None where a source does not say."""

    text: str
    id: str
    harmful: bool | None = None
    category: str | None = None
    source: str = ""
    split: str | None = None


@dataclass(frozen=True)
class Persona:
    """A system prompt and the family it belongs to (``text=None``: no system prompt)."""

    text: str | None
    family: str
    id: str
    split: str | None = None


@dataclass(frozen=True)
class ChatPrompt:
    """One (persona, request) cell of a grid, labelled with the group it contributes to."""

    system: str | None
    user: str
    group: str
    request_id: str = ""
    persona_id: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def fingerprint_parts(self) -> list:
        """What a stored grid cell computed on this prompt depends on (its text)."""
        return ["prompt", self.system, self.user, None]


@dataclass(frozen=True)
class TraitSet:
    """Contrastive instructions for one relational trait (``pos`` shows it, ``neg`` its opposite)."""

    name: str
    pos: tuple[str, ...]
    neg: tuple[str, ...]
    questions: tuple[str, ...]
    source: str = ""


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist; check the name or reinstall persona_gate.") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); restore it from the repository.") from None


def _check_choice(value: str | None, allowed: Sequence[str], what: str) -> None:
    if value is not None and value not in allowed:
        raise DatasetError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}.")


def load_requests(kind: str, split: str | None = None) -> list[Request]:
    """persona_gate's own generic harmful or harmless requests, optionally one fixed split."""
    _check_choice(kind, REQUEST_KINDS, "request kind")
    _check_choice(split, SPLITS, "split")
    raw = _read_json(data_dir() / "requests" / f"{kind}.json")
    items = [
        Request(
            text=r["text"],
            id=r["id"],
            harmful=(kind == "harmful"),
            category=r.get("category"),
            source=f"persona_gate/{kind}",
            split=r.get("split"),
        )
        for r in raw["items"]  # type: ignore[index]
    ]
    return [r for r in items if split is None or r.split == split]


def load_personas(family: str, split: str | None = None) -> list[Persona]:
    """Paraphrases of the compliant, the safe-assistant or a neutral persona (a style or role only)."""
    _check_choice(family, PERSONA_FAMILIES, "persona family")
    _check_choice(split, SPLITS, "split")
    raw = _read_json(data_dir() / "personas" / f"{family}.json")
    items = [Persona(text=p["text"], family=family, id=p["id"], split=p.get("split")) for p in raw["items"]]  # type: ignore[index]
    return [p for p in items if split is None or p.split == split]


def load_trait(name: str, path: str | Path | None = None) -> TraitSet:
    """One trait's pos/neg instructions: ours (``data/traits``) or a persona-vectors style JSON file."""
    if path is None:
        _check_choice(name, TRAITS, "trait")
        path = data_dir() / "traits" / f"{name}.json"
    path = Path(path)
    raw = _read_json(path)
    try:
        pairs = raw["instruction"]  # type: ignore[index]
        pos = tuple(p["pos"] for p in pairs)
        neg = tuple(p["neg"] for p in pairs)
        questions = tuple(raw.get("questions", ()))  # type: ignore[union-attr]
    except (KeyError, TypeError):
        raise DatasetError(
            f"{path} is not a trait file: expected {{'instruction': [{{'pos': ..., 'neg': ...}}], "
            "'questions': [...]}} as in the persona-vectors / assistant-axis format."
        ) from None
    if not pos:
        raise EmptyGroupError(f"{path} holds no instruction pairs; add at least two.")
    return TraitSet(name=name, pos=pos, neg=neg, questions=questions, source=str(path))


def no_system_persona() -> Persona:
    """The 'no system prompt' persona (most chat models behave like their safe default)."""
    return Persona(text=None, family="none", id="none")


def persona_grid(
    personas: Iterable[Persona],
    requests: Iterable[Request],
    group: str,
) -> list[ChatPrompt]:
    """Every persona crossed with every request, labelled ``group``; requests vary fastest."""
    personas, requests = list(personas), list(requests)
    if not personas or not requests:
        raise EmptyGroupError(
            f"group {group!r} would be empty ({len(personas)} personas x {len(requests)} requests); "
            "pass at least one of each."
        )
    return [
        ChatPrompt(system=p.text, user=r.text, group=group, request_id=r.id, persona_id=p.id)
        for p in personas
        for r in requests
    ]


def paired_grid(
    personas: Sequence[Persona],
    requests: Sequence[Request],
    group: str,
) -> list[ChatPrompt]:
    """Request i gets persona i mod len(personas): one prompt per request, personas cycled.

    Cheaper than :func:`persona_grid` when only the mean over requests matters, and it keeps the
    same request set across groups, which is what a persona contrast needs.
    """
    personas, requests = list(personas), list(requests)
    if not personas or not requests:
        raise EmptyGroupError(
            f"group {group!r} would be empty ({len(personas)} personas x {len(requests)} requests); "
            "pass at least one of each."
        )
    return [
        ChatPrompt(
            system=personas[i % len(personas)].text,
            user=r.text,
            group=group,
            request_id=r.id,
            persona_id=personas[i % len(personas)].id,
        )
        for i, r in enumerate(requests)
    ]


@runtime_checkable
class PromptSets(Protocol):
    """Where a model's requests and personas come from (a model profile names one).

    ``requests(kind, split, n, seed)`` gives the candidate requests of ``kind`` (harmful or
    harmless) in ``split``: sets drawn from a grammar draw ``n`` (deterministic in ``seed``),
    sets read from files give the whole split and leave subsampling to the caller.
    ``personas(family, split, seed)`` gives the system prompts of a persona family.
    """

    name: str

    def requests(self, kind: str, split: str, n: int | None, seed: int) -> list[Request]: ...

    def personas(self, family: str, split: str, seed: int) -> list[Persona]: ...


@dataclass(frozen=True)
class FilePromptSets:
    """persona_gate's own open-vocabulary sets under ``data/`` (generic English; no operational content)."""

    name: str = "open"

    def requests(self, kind: str, split: str, n: int | None = None, seed: int = 0) -> list[Request]:
        return load_requests(kind, split)

    def personas(self, family: str, split: str, seed: int = 0) -> list[Persona]:
        # Personas have train and test paraphrases only; validation uses the training ones.
        return load_personas(family, "test" if split == "test" else "train")


OPEN_SETS = FilePromptSets()
