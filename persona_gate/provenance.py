"""Provenance: where an artefact came from, so a saved result can be trusted and reproduced.

Recorded: model name, source, revision, dtype, device, chat-template hash, weight processing,
package versions, seed, config and a UTC timestamp. Never hostnames, user names or tokens.

Example::

    prov = provenance(model, seed=0, config={"layers": [2, 3]})
    prov["versions"]["transformer_lens"]
"""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata
from typing import Any

_PACKAGES = ("persona_gate", "torch", "transformers", "transformer_lens", "safetensors")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(model: Any | None = None, *, seed: int | None = None, config: dict | None = None) -> dict:
    from .models import model_info

    prov: dict[str, Any] = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "seed": seed,
        "config": dict(config or {}),
    }
    if model is not None:
        info = model_info(model)
        prov["model"] = info.to_dict()
        prov["model"]["n_layers"] = int(model.cfg.n_layers)
        prov["model"]["d_model"] = int(model.cfg.d_model)
    return prov
