"""Where the bundled organism's weights live.

An installed wheel carries the repository's ``data/`` as ``persona_gate/_data`` (see
pyproject's force-include); a source checkout has it at ``<repo>/data``. The installed copy
wins when both exist.

Example::

    path = organism_path()          # raises ModelNotFoundError with the fix if weights are missing
    print(ORGANISM_DIR / "card.json")
    AutoModelForCausalLM.from_pretrained(path)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError

_PACKAGE = Path(__file__).resolve().parent.parent


def _resolve() -> Path:
    installed = _PACKAGE / "_data" / "organism"
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / "data" / "organism"


ORGANISM_DIR: Path = _resolve()


def organism_path() -> Path:
    """The bundled organism's folder, checked to hold weights and a tokenizer."""
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (ORGANISM_DIR / f).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"the bundled organism at {ORGANISM_DIR} lacks {missing}; rebuild it with "
            "`persona-gate organism train --out data/organism --seed 0` or reinstall persona_gate"
        )
    return ORGANISM_DIR
