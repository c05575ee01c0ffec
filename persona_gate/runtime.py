"""Python plumbing every layer uses: names exported lazily, and values bound for one block.

* :func:`lazy_exports` -- a package's names that resolve on first use, so importing the package
  stays cheap (``import persona_gate`` loads neither torch nor TransformerLens). A package lists
  its lazy names in a table, name -> the module that defines it (relative to the package), and
  takes its module ``__getattr__`` and ``__dir__`` from it; a name is imported the first time it
  is read and then kept on the package; ``submodules`` (attribute -> module) are returned as
  modules. Static tools cannot follow a table: each package mirrors it in an
  ``if TYPE_CHECKING:`` block of plain imports.
* :func:`bound` -- a context variable set for the length of a ``with`` block and reset after it,
  however the block ends: how a runner tells the hooks below it which batch layout is running,
  or a stage which processes share its cells.

This module imports nothing of persona_gate.

Example::

    _LAZY = {"train_organism": "train", "behaviour_card": "card"}
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)

    _LAYOUT: ContextVar[Tensor | None] = ContextVar("layout", default=None)
    with bound(_LAYOUT, mask):
        ...                                   # _LAYOUT.get() is mask here
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")


def lazy_exports(
    package: str, names: Mapping[str, str], submodules: Mapping[str, str] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package`` (its ``__name__``): ``names`` maps each
    lazy name to its module, ``submodules`` each module attribute to the module it is; ``__dir__``
    lists the package's ``__all__``."""
    modules = dict(submodules or {})

    def __getattr__(name: str) -> Any:
        if name in modules:
            return importlib.import_module(f".{modules[name]}", package)
        try:
            where = names[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(f".{where}", package), name)
        vars(sys.modules[package])[name] = value  # read once: later reads do not come back here
        return value

    def __dir__() -> list[str]:
        return list(vars(sys.modules[package]).get("__all__", ()))

    return __getattr__, __dir__


@contextmanager
def bound(var: ContextVar[T], value: T) -> Iterator[T]:
    """``var`` set to ``value`` inside the block (which receives ``value``), reset after it."""
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)
