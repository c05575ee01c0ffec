"""The guard: cap the persona projection over a layer window, as an intervention like Steer and Ablate.

With ``v`` the unit persona direction at layer ``l`` (positive = compliant) and ``tau_l`` the cap,
every position's residual stream at ``resid_pre.l`` of the window becomes

    x <- x - max(0, x . v - tau_l) v

so a projection above the cap is lowered to it and nothing else moves: the cap never raises a
projection, leaves the orthogonal complement alone, and with ``tau_l = +inf`` is the identity.
The caps come from the model itself: the ``percentile`` of ``x . v`` over every token of
safe-persona prompts (train split; :func:`token_projections`), so a safe-persona prompt is
mostly left alone and a compliant persona is pushed back to where safe personas sit.

``refusal`` (optional) re-adds the refusal direction where the cap engaged: at each capped
position ``alpha * r * u``, with ``u`` the unit refusal direction made orthogonal to ``v`` (so the
re-added refusal cannot raise the persona projection again) and ``r`` its raw norm. The
re-addition is per position, so a guard behaves the same with and without a KV cache.

Example::

    guard = Guard.calibrate(model, pr.persona, window=(3, 5), percentile=50)
    with apply(model, guard):
        refusals = scorer.score(persona_attack_prompts)
    generate(model, prompts) under `with apply(model, guard)` guards every generated token too
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.directions import DirectionSet
from ..core.interventions import apply
from ..core.prompt_layout import position_mask
from ..errors import ConfigError, InterventionError, LayerOutOfRangeError
from ..models.protocol import ChatModel
from ..prompts.sets import ChatPrompt
from ..sites import HookSite, resolve


def check_window(window: Sequence[int], n_layers: int) -> tuple[int, int]:
    """``(start, end)`` inclusive, inside the model; a named error naming the model's depth otherwise."""
    try:
        start, end = (int(w) for w in window)
    except (TypeError, ValueError):
        raise ConfigError(f"a window is (start, end), inclusive, e.g. (3, 5); got {window!r}.") from None
    if not 0 <= start <= end < n_layers:
        raise LayerOutOfRangeError(
            f"window {start}-{end} is not inside this model's layers 0-{n_layers - 1}; pick a window within "
            f"them, e.g. ({max(0, n_layers // 2)}, {n_layers - 1})."
        )
    return start, end


def check_percentile(p: float | int) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 100.0:
        raise ConfigError(
            f"percentile must be a number in [0, 100] (the share of safe-persona tokens left uncapped), got {p!r}."
        )
    return float(p)


@dataclass(frozen=True)
class Guard:
    """Cap ``x . v_l`` at ``thresholds[l]`` for every layer ``l`` of the window (an :func:`apply` spec)."""

    direction: DirectionSet
    thresholds: Mapping[int, float]
    refusal: DirectionSet | None = None
    alpha: float | int = 0.0
    source_layer: int | None = None
    scope: str = "both"
    percentile: float | None = None  # what the thresholds were calibrated at, for the record

    def __post_init__(self) -> None:
        if not self.thresholds:
            raise InterventionError(
                "the guard has no layers (empty thresholds); calibrate it over a window, e.g. (3, 5)."
            )
        bad = {k: v for k, v in self.thresholds.items() if isinstance(v, float) and math.isnan(v)}
        if bad:
            raise InterventionError(f"thresholds {bad} are NaN; calibrate on prompts that reach those layers.")
        if self.alpha and self.refusal is None:
            raise InterventionError(
                "alpha re-adds the refusal direction, so pass refusal= (the refusal DirectionSet) too."
            )

    @property
    def layers(self) -> list[int]:
        return sorted(int(k) for k in self.thresholds)

    @property
    def window(self) -> tuple[int, int]:
        return self.layers[0], self.layers[-1]

    @classmethod
    def calibrate(
        cls,
        model: ChatModel,
        persona: DirectionSet,
        window: Sequence[int],
        percentile: float | int = 50.0,
        *,
        refusal: DirectionSet | None = None,
        alpha: float | int = 0.0,
        source_layer: int | None = None,
        prompts: Sequence[ChatPrompt] | None = None,
        n: int = 48,
        seed: int = 0,
    ) -> Guard:
        """A guard over ``window`` (inclusive) with caps at ``percentile`` of safe-persona token projections."""
        start, end = check_window(window, int(model.cfg.n_layers))
        percentile = check_percentile(percentile)
        layers = list(range(start, end + 1))
        proj = token_projections(model, persona, layers, prompts=prompts, n=n, seed=seed, source_layer=source_layer)
        return cls(
            persona,
            thresholds_at(proj, percentile),
            refusal=refusal,
            alpha=alpha,
            source_layer=source_layer,
            percentile=percentile,
        )

    def hooks(self, model: ChatModel) -> list[tuple[str, Callable]]:
        self.direction.check_model(model)
        n = int(model.cfg.n_layers)
        outside = [layer for layer in self.layers if not 0 <= layer < n]
        if outside:
            raise LayerOutOfRangeError(
                f"the guard's layers {outside} are not in this model (layers 0-{n - 1}); calibrate it on this model "
                f"with a window inside 0-{n - 1}."
            )
        if self.refusal is not None:
            self.refusal.check_model(model)
        out = []
        for layer in self.layers:
            src = layer if self.source_layer is None else self.source_layer
            v = self.direction.at(src).float()
            tau = float(self.thresholds[layer])
            add = None
            if self.refusal is not None and self.alpha:
                i = self.refusal.site_index(src)
                u = self.refusal.vectors[i].double()
                u = u - (u @ v.double()) * v.double()  # orthogonal to v: re-adding cannot lift the persona projection
                if float(u.norm()) > 0:
                    add = (u / u.norm() * self.alpha * float(self.refusal.raw_norms[i])).float()

            def hook(x: Tensor, hook: Any, v: Tensor = v, tau: float = tau, add: Tensor | None = add) -> Tensor:
                if tau == math.inf:
                    return x
                u = v.to(device=x.device)
                xf = x.float()  # float32 for the projection, as Ablate: in bf16 x.v is swamped by the norm
                excess = (xf @ u - tau).clamp_min(0.0)
                m = position_mask(x, self.scope)
                if m is not None:
                    excess = excess * m[..., 0].to(excess.dtype)
                out = xf - excess[..., None] * u
                if add is not None:
                    out = out + (excess > 0).to(out.dtype)[..., None] * add.to(device=x.device)
                return out.to(x.dtype)

            out.append((resolve(HookSite(layer, self.direction.sites[0].kind), model), hook))
        return out

    def reuse_keys(self, model: ChatModel) -> list[tuple]:
        """Per hook of :meth:`hooks`, what determines it (prefix reuse nests cells by equal keys)."""
        return [
            (
                "cap",
                id(self.direction),
                layer,
                self.source_layer,
                float(self.thresholds[layer]),
                id(self.refusal),
                float(self.alpha),
                self.scope,
            )
            for layer in self.layers
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "window": list(self.window),
            "percentile": self.percentile,
            "thresholds": {str(k): float(v) for k, v in sorted(self.thresholds.items())},
            "direction": self.direction.name,
            "refusal": None if self.refusal is None else self.refusal.name,
            "alpha": self.alpha,
            "source_layer": self.source_layer,
            "scope": self.scope,
        }


class _Recorder:
    """Identity hooks that keep ``x . v_l`` at every non-pad position (an :func:`apply` spec)."""

    def __init__(self, direction: DirectionSet, layers: Sequence[int], source_layer: int | None) -> None:
        self.direction, self.layers, self.source_layer = direction, list(layers), source_layer
        self.values: dict[int, list[Tensor]] = {layer: [] for layer in self.layers}

    def hooks(self, model: ChatModel) -> list[tuple[str, Callable]]:
        out = []
        for layer in self.layers:
            v = self.direction.at(layer if self.source_layer is None else self.source_layer).float()

            def hook(x: Tensor, hook: Any, layer: int = layer, v: Tensor = v) -> Tensor:
                p = x.float() @ v.to(x.device)
                m = position_mask(x, "both")
                self.values[layer].append((p[m[..., 0].bool()] if m is not None else p.reshape(-1)).detach().cpu())
                return x

            out.append((resolve(HookSite(layer, self.direction.sites[0].kind), model), hook))
        return out


def calibration_prompts(model: ChatModel, n: int = 48, seed: int = 0) -> list[ChatPrompt]:
    """Safe-persona prompts of the train split, harmful and harmless requests (``n`` each)."""
    from ..core.contrasts import standard_prompts

    return [p for p in standard_prompts(model=model, n_per_group=n, seed=seed) if p.group.startswith("safe/")]


def token_projections(
    model: ChatModel,
    persona: DirectionSet,
    layers: Sequence[int],
    *,
    prompts: Sequence[ChatPrompt] | None = None,
    n: int = 48,
    seed: int = 0,
    source_layer: int | None = None,
    batch_size: int = 32,
) -> dict[int, Tensor]:
    """``x . v_l`` at every token of the calibration prompts (default :func:`calibration_prompts`), per layer."""
    from ..scoring.metrics import first_token_logprobs

    prompts = list(prompts) if prompts is not None else calibration_prompts(model, n, seed)
    if not prompts:
        raise ConfigError(
            "no calibration prompts; pass safe-persona prompts (or let the guard take the train split's)."
        )
    rec = _Recorder(persona, layers, source_layer)
    with apply(model, rec), torch.no_grad():
        first_token_logprobs(model, prompts, batch_size=batch_size)
    return {layer: torch.cat(v) for layer, v in rec.values.items()}


def thresholds_at(projections: Mapping[int, Tensor], percentile: float | int) -> dict[int, float]:
    """The ``percentile`` of each layer's token projections (100: the largest, i.e. no safe token capped)."""
    q = check_percentile(percentile) / 100.0
    return {layer: float(torch.quantile(p.double(), q)) for layer, p in projections.items()}
