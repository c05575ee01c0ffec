"""Provenance: where an artefact came from, so a saved result can be trusted and reproduced.

Recorded: model name, source, revision, dtype, device, chat-template hash, weight processing,
package versions, seed, config and a UTC timestamp. Never hostnames, user names or tokens. The
model's description comes from :func:`persona_gate.models.loading.provenance`, which describes a
loaded model and calls :func:`stamp`; this module imports nothing of persona_gate.

Example::

    prov = stamp({"name": "organism"}, seed=0, config={"layers": [2, 3]})
    prov["versions"]["transformer_lens"]
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Mapping
from importlib import metadata
from typing import Any

_PACKAGES = ("persona_gate", "torch", "transformers", "tokenizers", "transformer_lens", "safetensors")


def versions() -> dict[str, str | None]:
    """Python's and the deciding packages' versions (None for one not installed): every record and card uses these."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def stamp(model: Mapping[str, Any] | None = None, *, seed: int | None = None, config: dict | None = None) -> dict:
    """A provenance record: the model's description (if any), package versions, seed, config, time."""
    prov: dict[str, Any] = {
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "seed": seed,
        "config": dict(config or {}),
    }
    if model is not None:
        prov["model"] = dict(model)
    return prov
