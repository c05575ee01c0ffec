"""Typed JSON records: the small documents a run writes (``summary.json``, a cost plan, a screening
validation) as frozen dataclasses with one JSON form.

A :class:`Record` has ``to_dict``/``from_dict`` and ``to_json``/``from_json``, a
``schema_version`` in every document it writes, and a read-only mapping over its JSON form
(``summary["baseline_refusal_rate"]``), so code written against the plain dicts keeps working.

Example::

    @dataclasses.dataclass(frozen=True)
    class Note(Record):
        DOCUMENT = True
        text: str

        def _body(self):
            return {"text": self.text}

        @classmethod
        def _from_body(cls, d):
            return cls(d["text"])

    Note("hi").to_dict()  # {"text": "hi", "schema_version": 1}
    Note.from_json(Note("hi").to_json())["text"]  # "hi"
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any, ClassVar, TypeVar

from ..errors import ArtefactError, SchemaVersionError

R = TypeVar("R", bound="Record")


class Record(Mapping[str, Any]):
    """Base of the typed JSON results: a frozen dataclass with one JSON form.

    A subclass writes ``_body()`` (its JSON form, keys in the order the file holds them) and
    ``_from_body(d)`` (the inverse). ``to_dict()`` is the body, plus ``"schema_version"`` (last)
    for a ``DOCUMENT``: a record written as a file of its own. A record nested in another one
    (a verdict in a summary) keeps its body unchanged, so the enclosing file is what it always was.
    ``from_dict`` accepts documents written before the version key existed (version 1) and
    refuses newer versions than this persona_gate reads. Reading it like a dict
    (``r["key"]``, ``r.get``, ``r.keys()``, ``in``, iteration) reads the JSON form; values come
    back as copies, so the record stays frozen.
    """

    SCHEMA_VERSION: ClassVar[int] = 1
    DOCUMENT: ClassVar[bool] = False

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_body(cls: type[R], d: dict[str, Any]) -> R:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (plain dicts, lists and scalars), as the file holds it."""
        return copy.deepcopy(self._form)

    @classmethod
    def from_dict(cls: type[R], d: Any) -> R:
        """The record of a JSON form (``Mapping``; anything else is an :class:`ArtefactError`)."""
        if isinstance(d, cls):
            return d
        if not isinstance(d, Mapping):
            raise ArtefactError(f"a {cls.__name__} is read from a JSON object, not {type(d).__name__}.")
        body = dict(d.to_dict() if isinstance(d, Record) else d)
        version = body.pop("schema_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= cls.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"this {cls.__name__} has schema version {version!r}, but this persona_gate reads versions "
                f"1..{cls.SCHEMA_VERSION}; upgrade persona_gate."
            )
        try:
            return cls._from_body(body)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, ArtefactError):
                raise
            raise ArtefactError(f"not a {cls.__name__} ({type(e).__name__}: {e}); write it again.") from None

    def to_json(self, indent: int | None = 1) -> str:
        """The JSON text, with ``schema_version`` (also for a nested record written on its own)."""
        d = self.to_dict()
        return json.dumps(d if self.DOCUMENT else {**d, "schema_version": self.SCHEMA_VERSION}, indent=indent)

    @classmethod
    def from_json(cls: type[R], text: str) -> R:
        return cls.from_dict(json.loads(text))

    @cached_property
    def _form(self) -> dict[str, Any]:
        # Written once per (frozen) record; cached_property sets the instance dict, not an attribute.
        body = json.loads(json.dumps(self._body()))  # canonical: tuples become lists
        return {**body, "schema_version": self.SCHEMA_VERSION} if self.DOCUMENT else body

    def __getitem__(self, key: str) -> Any:
        value = self._form[key]
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._form))

    def __len__(self) -> int:
        return len(self._form)

    def __contains__(self, key: object) -> bool:
        return key in self._form
