"""Hook sites: the one place where TransformerLens hook names are built.

A :class:`HookSite` is ``(layer, kind)``; :func:`resolve` turns it into the classic TransformerLens
name (``blocks.{layer}.hook_{kind}``) after checking the layer against the model. Every other
module asks this one for names, so a model family with other names needs a change here only.

``resid_pre`` at layer l is the residual stream *entering* block l (= Hugging Face
``hidden_states[l]``); ``resid_mid`` sits between attention and MLP; ``resid_post`` leaves block l.

Example::

    site = HookSite(3, "resid_pre")
    resolve(site, model)            # 'blocks.3.hook_resid_pre'
    parse_site("resid_post.5")      # HookSite(layer=5, kind='resid_post')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import LayerOutOfRangeError, UnknownHookSiteError

SITE_KINDS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@dataclass(frozen=True, order=True)
class HookSite:
    """A residual-stream (or sublayer output) site: ``layer`` is the block index."""

    layer: int
    kind: str = "resid_pre"

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise UnknownHookSiteError(f"unknown hook site kind {self.kind!r}; use one of {', '.join(SITE_KINDS)}.")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise LayerOutOfRangeError(f"layer must be an int, got {self.layer!r}.")
        if self.layer < 0:
            raise LayerOutOfRangeError(
                f"layer {self.layer} is negative; pass 0 .. n_layers-1 (use sites_for(model, ...) "
                "to expand negative indices against a model)."
            )

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.kind}"

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}"


def parse_site(text: str) -> HookSite:
    """Parse ``'resid_pre.3'`` or a full hook name ``'blocks.3.hook_resid_pre'``."""
    t = text.strip()
    if t.startswith("blocks."):
        parts = t.split(".")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].startswith("hook_"):
            return HookSite(int(parts[1]), parts[2][len("hook_") :])
    else:
        kind, _, layer = t.rpartition(".")
        if kind and layer.isdigit():
            return HookSite(int(layer), kind)
    raise UnknownHookSiteError(f"cannot parse hook site {text!r}; write 'resid_pre.3' or 'blocks.3.hook_resid_pre'.")


def n_layers_of(model: Any) -> int:
    return int(model.cfg.n_layers)


def describe_layers(layers: Iterable[int]) -> str:
    """Layers in words, consecutive runs as spans: ``[7, 1, 2, 3]`` -> ``"layers 1-3, 7"``;
    ``[5]`` -> ``"layer 5"``; ``[]`` -> ``"no layer"``."""
    layers = sorted(set(int(x) for x in layers))
    if not layers:
        return "no layer"
    spans, start = [], layers[0]
    for a, b in zip(layers, [*layers[1:], None]):
        if b != a + 1:
            spans.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return f"layer{'s' if len(layers) > 1 else ''} {', '.join(spans)}"


def layer_of_hook(hook_name: str) -> int | None:
    """The block a hook name belongs to (``blocks.3.hook_resid_pre`` -> 3); None outside the blocks."""
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def check_layer(layer: int, n_layers: int) -> int:
    """Return ``layer`` (negative counts from the end) if it lies in ``0 .. n_layers-1``."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise LayerOutOfRangeError(f"layer must be an int, got {layer!r}.")
    idx = layer + n_layers if layer < 0 else layer
    if not 0 <= idx < n_layers:
        raise LayerOutOfRangeError(
            f"layer {layer} is out of range for a model with {n_layers} layers; "
            f"use 0 .. {n_layers - 1} (or -1 for the last)."
        )
    return idx


def resolve(site: HookSite, model: Any) -> str:
    """The hook name of ``site`` on ``model``; raises if the layer or hook does not exist."""
    check_layer(site.layer, n_layers_of(model))
    name = site.hook_name
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is not None and name not in hook_dict:
        raise UnknownHookSiteError(
            f"the model exposes no hook {name!r}; load it with persona_gate.load_chat_model "
            "(compatibility mode gives the classic blocks.{l}.hook_* names) or pick another site kind."
        )
    return name


def sites_for(
    model: Any, layers: Iterable[int] | None = None, kind: str | Sequence[str] = "resid_pre"
) -> list[HookSite]:
    """Sites for ``layers`` (default: all) and one or more kinds, layer-major, validated."""
    n = n_layers_of(model)
    idx = range(n) if layers is None else [check_layer(layer, n) for layer in layers]
    kinds = [kind] if isinstance(kind, str) else list(kind)
    if not kinds:
        raise UnknownHookSiteError(f"no site kind given; use one of {', '.join(SITE_KINDS)}.")
    return [HookSite(layer, k) for layer in idx for k in kinds]
