"""Control vectors for llama.cpp: a direction set as a ``controlvector`` GGUF file.

llama.cpp adds tensor ``direction.<k>`` (float32, ``n_embd`` long, ``k >= 1``) to the output of
its layer ``k`` -- the residual stream entering layer ``k + 1``, which persona_gate calls
``resid_pre.<k+1>``. So persona_gate's layer ``l`` is written as ``direction.<l-1>``, and only
layers ``l >= 2`` can be expressed (llama.cpp has no ``direction.0``: it never steers the
embedding output). Each tensor is ``alpha * raw_norm[l] * v[l]`` (``units="raw"``: alpha = 1 moves
the stream by one mean difference, as :class:`~persona_gate.core.interventions.Steer` does) or
``alpha * v[l]`` (``units="unit"``); ``--control-vector-scaled FILE s`` multiplies it by ``s`` again,
and ``--control-vector-layer-range a b`` picks llama.cpp layers ``a..b`` (persona_gate's ``a+1..b+1``).
llama.cpp adds a control vector at every position, prompt and reply, and at every layer at once.

Example::

    export_control_vector(pr.persona, "persona.gguf", alpha=4.0, layers=[10])
    # llama-cli -m model.gguf --control-vector persona.gguf
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InterventionError

ARCH = "controlvector"


def llama_cpp_layer(layer: int) -> int:
    """llama.cpp's index of the control vector that lands in persona_gate's ``resid_pre.<layer>``."""
    return layer - 1


def export_control_vector(
    direction: Any,
    path: str | Path,
    *,
    alpha: float = 1.0,
    layers: Sequence[int] | None = None,
    units: str = "raw",
    model_hint: str | None = None,
) -> Path:
    """Write ``direction`` (a DirectionSet at ``resid_pre``) as a llama.cpp control-vector GGUF file.

    ``layers``: persona_gate layers to include (default: every layer of the set from 2 on, where
    the direction is non-zero). ``model_hint``: llama.cpp's informational model name (default:
    the model the directions were fitted on). The file is written atomically; returns its path.
    """
    import gguf
    import numpy as np

    if direction.sites and direction.sites[0].kind != "resid_pre":
        raise InterventionError(
            f"a control vector adds to the residual stream; {direction.name!r} lives at "
            f"{direction.sites[0].kind}. Fit the directions at resid_pre."
        )
    if units not in ("raw", "unit"):
        raise InterventionError(f"units must be 'raw' or 'unit', got {units!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
        raise InterventionError(f"alpha must be a finite number, got {alpha!r}.")
    have = direction.layers
    chosen = (
        [layer for layer in have if layer >= 2 and float(direction.raw_norms[direction.site_index(layer)]) > 0]
        if layers is None
        else [int(x) for x in layers]
    )
    bad = [layer for layer in chosen if layer < 2]
    if bad:
        raise InterventionError(
            f"layers {bad} cannot go into a llama.cpp control vector: it adds direction.<k> after its layer "
            f"k >= 1, i.e. into resid_pre.<k+1>; choose layers >= 2."
        )
    missing = [layer for layer in chosen if layer not in have]
    if missing or not chosen:
        raise InterventionError(f"the direction set has layers {have}; layers {missing or chosen} cannot be exported.")
    path = Path(path)
    if path.suffix != ".gguf":
        raise InterventionError(f"{path} does not end in .gguf; llama.cpp expects a .gguf control-vector file.")
    fitted = (direction.provenance or {}).get("model") or {}
    hint = model_hint or str(fitted.get("name") or "unknown")
    writer = gguf.GGUFWriter(path=None, arch=ARCH)
    writer.add_string(f"{ARCH}.model_hint", hint)
    writer.add_uint32(f"{ARCH}.layer_count", len(chosen))
    writer.add_string("persona_gate.direction", direction.name)
    writer.add_string("persona_gate.layers", json.dumps({str(llama_cpp_layer(layer)): layer for layer in chosen}))
    writer.add_string("persona_gate.scale", json.dumps({"alpha": float(alpha), "units": units}))
    writer.add_string("persona_gate.sign", f"{direction.positive} - {direction.negative} at {direction.position}")
    for layer in chosen:
        i = direction.site_index(layer)
        scale = float(alpha) * (float(direction.raw_norms[i]) if units == "raw" else 1.0)
        writer.add_tensor(
            f"direction.{llama_cpp_layer(layer)}", (direction.vectors[i].double() * scale).float().numpy()
        )
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")  # a sibling, renamed over path when complete
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return path
