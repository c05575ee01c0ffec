"""Models persona_gate builds in code the first time they are named, then loads from the cache.

``planted-gate`` is the planted-gate model (:mod:`persona_gate.organism.planted`): a tiny Llama
whose persona gate sits at known layers, 8 layers with the gate at ``[4, 5]``; name another window
as ``planted-gate:START-END`` (``planted-gate:2-3``) and another depth as
``planted-gate:START-END:LAYERS`` (``planted-gate:2-3:10``). The first load builds the folder into
``<cache>/built/`` (atomically, seconds); later loads read it. The builder is named in
:data:`~persona_gate.models.registry.BUILT_MODELS` and imported by name.

Example::

    parse_built("planted-gate:2-3")          # ('planted-gate', {'start': 2, 'end': 3, 'n_layers': 8})
    built_folder("planted-gate", cache_dir())  # .../built/planted-gate-4-5-L8-v1, built if missing
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError
from .registry import BUILT_MODELS, PLANTED

PLANTED_DEFAULTS = {"start": 4, "end": 5, "n_layers": 8}
_PLANTED = re.compile(rf"{re.escape(PLANTED)}(?::(\d+)-(\d+)(?::(\d+))?)?")


def parse_built(name: str) -> tuple[str, dict[str, int]] | None:
    """The built model a name asks for and its arguments, or None when the name is not one."""
    text = str(name)
    if text != PLANTED and not text.startswith(f"{PLANTED}:"):  # a folder such as planted-gate-run stays a folder
        return None
    m = _PLANTED.fullmatch(text)
    if m is None:
        raise ModelNotFoundError(
            f"{text!r} is not a planted-gate name; use {PLANTED!r}, '{PLANTED}:START-END' (e.g. {PLANTED}:2-3) or "
            f"'{PLANTED}:START-END:LAYERS' (e.g. {PLANTED}:2-3:10)."
        )
    args = dict(PLANTED_DEFAULTS)
    if m.group(1) is not None:
        args["start"], args["end"] = int(m.group(1)), int(m.group(2))
    if m.group(3) is not None:
        args["n_layers"] = int(m.group(3))
    return PLANTED, args


def _builder(kind: str) -> tuple[Any, Any]:
    module, function = BUILT_MODELS[kind]
    mod = importlib.import_module(module)
    return mod, getattr(mod, function)


def built_folder(name: str, cache: Path) -> Path | None:
    """The folder of the built model ``name`` under ``cache`` (built now if missing), or None when
    ``name`` names no built model. A bad window is a named error before anything is built."""
    parsed = parse_built(name)
    if parsed is None:
        return None
    kind, args = parsed
    mod, build = _builder(kind)
    mod.check_window(args["start"], args["end"], args["n_layers"])
    folder = Path(cache) / "built" / f"{kind}-{args['start']}-{args['end']}-L{args['n_layers']}-v{mod.VERSION}"
    if not (folder / "config.json").is_file():
        build(folder, **args)
    return folder
