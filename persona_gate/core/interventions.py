"""Interventions on the residual stream: steering and directional ablation, as one context manager.

With ``v`` the unit direction and ``r`` its raw norm (both from a :class:`DirectionSet`):

* :class:`Steer` adds ``alpha * r * v`` (``units="raw"``: alpha = 1 moves the activation by one
  mean difference) or ``alpha * v`` (``units="unit"``) at each chosen layer;
* :class:`Ablate` projects the direction out, ``x <- x - (x . v) v``, at every layer of a window,
  so afterwards the projection onto ``v`` is 0 there.

* :class:`AddBack` is a :class:`Steer` of a *second* direction (e.g. refusal added back while the
  compliant persona is active), named apart so a result says which is which.

All act at the direction set's site kind (``resid_pre`` by default). By default layer ``l`` uses
the direction fitted at layer ``l``; ``source_layer`` uses one layer's direction everywhere (the
usual choice for ablation over a window). ``scope`` picks the positions: ``"prompt"`` (Steer's
default: steering generated tokens at late layers tends to make the reply degenerate),
``"generated"`` or ``"both"`` (Ablate's default, as in directional ablation). persona_gate's runners (caching, scoring, :func:`generate`)
publish the padded batch's attention mask, so pad positions are never touched and prompt and
generated tokens are told apart, with or without a KV cache; in a plain ``model(...)`` call every
position counts as a prompt position.

:func:`apply` installs the hooks of any number of specs inside ``model.hooks``, so they are
removed when the block exits, also when it raises; it records how often each hook fired and
raises :class:`~persona_gate.errors.HookNotFiredError` if a requested hook never fired -- an
intervention that silently did nothing would fake a null result.

Example::

    with apply(model, Ablate(persona, layers=range(2, 6), source_layer=1)) as report:
        logits = model(tokens)
    report.calls          # {'blocks.2.hook_resid_pre': 1, ...}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import HookNotFiredError, InterventionError
from ..models.loading import check_model
from ..models.protocol import ChatModel
from ..sites import HookSite, check_layer, layer_of_hook, resolve
from .directions import DirectionSet
from .prompt_layout import SCOPES, position_mask, prompt_layout, record_early_stops  # noqa: F401  (re-exported)


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise InterventionError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}.")


def _layers(direction: DirectionSet, layers: Sequence[int] | None, model: ChatModel) -> list[int]:
    n = int(model.cfg.n_layers)
    chosen = direction.layers if layers is None else [check_layer(layer, n) for layer in layers]
    if not chosen:
        raise InterventionError(
            "no layers were chosen for the intervention (an empty window?); pass at least one layer."
        )
    return list(dict.fromkeys(chosen))


def _vector(direction: DirectionSet, layer: int, source_layer: int | None) -> tuple[Tensor, float]:
    i = direction.site_index(layer if source_layer is None else source_layer)
    return direction.vectors[i], float(direction.raw_norms[i])


def _site(direction: DirectionSet, layer: int) -> HookSite:
    return HookSite(layer, direction.sites[0].kind)


@dataclass(frozen=True)
class Steer:
    """Add ``alpha`` times the direction at each of ``layers`` (default: the set's own layers)."""

    direction: DirectionSet
    alpha: float
    layers: Sequence[int] | None = None
    units: str = "raw"
    source_layer: int | None = None
    scope: str = "prompt"

    def __post_init__(self) -> None:
        _check_scope(self.scope)
        if self.units not in ("raw", "unit"):
            raise InterventionError(
                f"units must be 'raw' (multiples of the mean difference) or 'unit', got {self.units!r}."
            )
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise InterventionError(f"alpha must be a number, got {self.alpha!r}; pass e.g. alpha=4.0.")
        if not torch.isfinite(torch.tensor(float(self.alpha))):
            raise InterventionError(f"alpha must be a finite number, got {self.alpha}; pick a value such as 1.0.")

    def hooks(self, model: ChatModel) -> list[tuple[str, Callable]]:
        self.direction.check_model(model)
        out = []
        for layer in _layers(self.direction, self.layers, model):
            v, r = _vector(self.direction, layer, self.source_layer)
            if r == 0 or float(v.norm()) == 0:
                raise InterventionError(
                    f"direction set {self.direction.name!r} has no direction at layer "
                    f"{layer if self.source_layer is None else self.source_layer} (raw norm 0), so steering there would do "
                    "nothing; choose layers where it has one (e.g. not resid_pre.0 for a last-token direction)."
                )
            shift = v * (self.alpha * (r if self.units == "raw" else 1.0))

            def hook(x: Tensor, hook: Any, shift: Tensor = shift) -> Tensor:
                delta = shift.to(device=x.device, dtype=x.dtype)
                m = position_mask(x, self.scope)
                return x + (delta if m is None else m * delta)

            out.append((resolve(_site(self.direction, layer), model), hook))
        return out

    def reuse_keys(self, model: ChatModel) -> list[tuple]:
        """Per hook of :meth:`hooks`, what determines it: equal keys act identically (prefix reuse nests cells by them)."""
        return [
            ("add", id(self.direction), layer, self.source_layer, float(self.alpha), self.units, self.scope)
            for layer in _layers(self.direction, self.layers, model)
        ]


@dataclass(frozen=True)
class Ablate:
    """Project the direction out at every layer in ``layers`` (default: the set's own layers)."""

    direction: DirectionSet
    layers: Sequence[int] | None = None
    source_layer: int | None = None
    scope: str = "both"

    def __post_init__(self) -> None:
        _check_scope(self.scope)

    def _active(self, model: ChatModel) -> list[tuple[int, Tensor]]:
        """The chosen layers with their vectors, without those where the direction is zero (nothing to project out)."""
        pairs = [
            (layer, _vector(self.direction, layer, self.source_layer)[0])
            for layer in _layers(self.direction, self.layers, model)
        ]
        return [(layer, v) for layer, v in pairs if float(v.norm()) != 0]

    def reuse_keys(self, model: ChatModel) -> list[tuple]:
        """Per hook of :meth:`hooks`, what determines it (see :meth:`Steer.reuse_keys`)."""
        return [
            ("ablate", id(self.direction), layer, self.source_layer, self.scope) for layer, _ in self._active(model)
        ]

    def hooks(self, model: ChatModel) -> list[tuple[str, Callable]]:
        self.direction.check_model(model)
        out = []
        for layer, v in self._active(model):

            def hook(x: Tensor, hook: Any, v: Tensor = v) -> Tensor:
                u = v.to(device=x.device, dtype=torch.float32)
                # float32 for the projection: in bf16 the residual's large norm swamps x.v.
                xf = x.float()
                proj = (xf @ u)[..., None] * u
                m = position_mask(x, self.scope)
                return (xf - (proj if m is None else m.float() * proj)).to(x.dtype)

            out.append((resolve(_site(self.direction, layer), model), hook))
        if not out:
            raise InterventionError(
                f"direction set {self.direction.name!r} is zero at every chosen layer, so ablating it would "
                "do nothing; choose layers where it has a direction (raw norm > 0)."
            )
        return out


@dataclass(frozen=True)
class AddBack(Steer):
    """Add a second direction back (e.g. refusal under compliant-persona steering); a Steer."""


@runtime_checkable
class Intervention(Protocol):
    """Anything :func:`apply` installs: Steer, Ablate, AddBack, :class:`persona_gate.guard.intervention.Guard`, ..."""

    def hooks(self, model: ChatModel) -> list[tuple[str, Callable]]: ...


@dataclass
class InterventionReport:
    """Which hooks an :func:`apply` block installed and how often each fired."""

    requested: list[str]
    calls: dict[str, int] = field(default_factory=dict)


@contextmanager
def apply(model: ChatModel, *specs: Intervention) -> Iterator[InterventionReport]:
    """Install every spec's hooks for the duration of the block; always remove them."""
    check_model(model)
    hooks: list[tuple[str, Callable]] = []
    for spec in specs:
        hooks.extend(spec.hooks(model))
    report = InterventionReport(requested=[name for name, _ in hooks])

    def counted(name: str, fn: Callable) -> Callable:
        def wrapper(x: Tensor, hook: Any) -> Tensor:
            report.calls[name] = report.calls.get(name, 0) + 1
            return fn(x, hook)

        return wrapper

    with record_early_stops() as stops, model.hooks(fwd_hooks=[(name, counted(name, fn)) for name, fn in hooks]):
        yield report
    # Hooks past a layer where a runner stopped the forward on purpose (caching) never run.
    limit = min(stops) if stops else None
    missing = sorted(
        {name for name in report.requested if name not in report.calls and (limit is None or _layer(name) <= limit)}
    )
    if missing:
        raise HookNotFiredError(
            f"intervention hooks {missing} never fired inside the block; run the model inside the "
            "`with apply(...)` block, and check that the layers exist in this forward."
        )


def _layer(hook_name: str) -> int:
    layer = layer_of_hook(hook_name)
    return -1 if layer is None else layer
