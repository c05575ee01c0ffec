"""Where persona_gate's own files live: the data folder, in a checkout or in an installed wheel.

The prompt sets, the bundled organism and the packaged chat models' adapters sit under one
folder, ``data/`` in a clone and ``persona_gate/_data`` in a wheel; :func:`data_dir` finds it, so
no module guesses paths of its own. This module imports nothing of persona_gate but its errors.

Example::

    data_dir() / "requests" / "harmful.json"
    data_dir() / "organism"
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import DatasetError


def data_dir() -> Path:
    """The folder of persona_gate's own data: the repository's ``data/`` or the wheel's copy."""
    packaged = files("persona_gate") / "_data"
    if packaged.is_dir():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[1] / "data"
    if repo.is_dir():
        return repo
    raise DatasetError(
        "persona_gate's data folder is missing; reinstall the package (pip install -e . from a "
        "clone, or pip install persona_gate) so that data/ ships with it."
    )
