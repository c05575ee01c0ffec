"""The paper's causal experiments (arXiv 2606.26161), each returning a :class:`LabelledResult`.

All score refusal at the first response token (:class:`RefusalScorer`) on held-out prompts over a
grid of cells (interventions), scored by prefix reuse (:mod:`persona_gate.grid.prefix`: the clean
prompts run once, each cell re-runs only the blocks from its first changed layer; the numbers
are those of one full forward per cell); every parameter lands in ``config``.

1. :func:`steering_sweep` -- add the persona direction (``alpha`` x its raw norm) at one layer
   under the safe persona: refusal vs alpha per layer, on harmful and harmless requests.
2. :func:`reintroduction` -- while the compliant persona is active (by prompt, or by steering),
   add the refusal direction back at one layer at a time: restored refusal per layer.
3. :func:`window_projection` -- while the compliant persona is active, project the persona
   direction out over a window of layers [start, end]; matched-norm random directions over the
   same windows are the control band.

Restoration is normalised so 0 = the compliant state and 1 = the safe baseline:
``(rate - compliant) / (baseline - compliant)``.

Example::

    sweep = steering_sweep(model, pr.persona, alphas=(0.0, 1.0, 2.0, 4.0))
    sweep.sel(request="harmful").mean("example")["refused"]     # [layer, alpha]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.directions import DirectionSet
from ..core.interventions import Ablate, AddBack, Steer
from ..errors import InterventionError
from ..grid import GridSpec, Scored, open_store, run_grid
from ..models.loading import check_model, provenance
from ..models.protocol import ChatModel
from ..results import LabelledResult
from ..scoring.refusal import RefusalScorer, eval_groups
from ..sites import check_layer

REQUESTS = ("harmful", "harmless")


def experiment_setup(model: ChatModel, n: int, seed: int, scorer: RefusalScorer | None, groups: dict | None):
    check_model(model)
    groups = groups if groups is not None else eval_groups(model, n, seed=seed)
    return groups, scorer if scorer is not None else RefusalScorer.for_model(model)


def _rate(refused: torch.Tensor) -> float:
    return round(float(refused.float().mean()), 4)


def experiment_layers(model: ChatModel, layers: Sequence[int] | None) -> list[int]:
    n = int(model.cfg.n_layers)
    # resid_pre.0 is the token embedding, where a last-token direction is exactly zero.
    return list(range(1, n)) if layers is None else [check_layer(layer, n) for layer in layers]


def _compliant_baselines(
    scorer: RefusalScorer, groups: dict, prompts: list, specs: list, compliant: torch.Tensor | None = None
) -> dict[str, float]:
    """The two ends that restoration is measured between: the safe baseline and the compliant state
    (``compliant``: its first-token log-probs when a prefix-reuse grid already ran it)."""
    base_lo, base_rf = scorer.score(groups["safe/harmful"])
    comp_lo, comp_rf = scorer.from_logprobs(compliant) if compliant is not None else scorer.score(prompts, *specs)
    return {
        "baseline_refusal_rate": _rate(base_rf),
        "baseline_logodds": round(float(base_lo.mean()), 4),
        "compliant_refusal_rate": _rate(comp_rf),
        "compliant_logodds": round(float(comp_lo.mean()), 4),
    }


@dataclass(frozen=True)
class CompliantState:
    """How an experiment makes the model compliant: by the compliant persona's prompts
    (``mode="prompt"``) or by steering the safe persona's prompts with the persona direction
    (``mode="steer"`` at ``layer`` with ``alpha``, e.g. the cell :func:`select_steering` chooses)."""

    mode: str = "prompt"
    layer: int | None = None
    alpha: float | None = None

    def resolve(self, persona: DirectionSet, groups: dict[str, list]) -> tuple[list, list]:
        """Harmful prompts and the interventions that make the model compliant on them."""
        if self.mode == "prompt":
            return groups["compliant/harmful"], []
        if self.mode == "steer":
            if self.layer is None or self.alpha is None:
                raise InterventionError("mode='steer' needs steer_layer and steer_alpha (see select_steering).")
            return groups["safe/harmful"], [Steer(persona, alpha=self.alpha, layers=[self.layer])]
        raise InterventionError(f"unknown mode {self.mode!r}; use 'prompt' (compliant system prompt) or 'steer'.")

    def config(self) -> dict[str, Any]:
        """How a result's config records it."""
        return {"mode": self.mode, "steer_layer": self.layer, "steer_alpha": self.alpha}


def compliant_state(
    persona: DirectionSet, groups: dict[str, list], mode: str, steer_layer: int | None, steer_alpha: float | None
) -> tuple[list, list]:
    """Harmful prompts and specs that make the model compliant: by persona prompt or by steering."""
    return CompliantState(mode, steer_layer, steer_alpha).resolve(persona, groups)


FIRST_TOKEN_REFUSAL = {"name": "refusal at the first response token", "higher_means": "more refusal"}


def _compliant_experiment(
    model: ChatModel,
    scorer: RefusalScorer,
    groups: dict,
    state: CompliantState,
    persona: DirectionSet,
    build: Callable[[list, list], GridSpec],
    *,
    axes: dict[str, Sequence[Any]],
    config: dict[str, Any],
    fingerprint: dict[str, Any],
    seed: int,
    checkpoint: str | Path | None,
    progress: bool,
    fill: float | None = None,
) -> LabelledResult:
    """An experiment run as a grid under the compliant state (``build(prompts, base)`` declares it),
    measured against the two ends restoration runs between: its ``logodds`` and ``refused`` per
    cell ``axes`` (dim -> labels, the cells' coordinates in order; cells not run are ``fill``) and
    example; ``config`` is completed with the state, ``n`` and ``seed``; ``fingerprint`` names what
    its cell store's cells depend on besides the prompts and the state."""
    prompts, base = state.resolve(persona, groups)
    spec = build(prompts, base)
    store = open_store(
        checkpoint, spec.kind, prompts=prompts, mode=state.mode, steer=[state.layer, state.alpha], **fingerprint
    )
    res = run_grid(model, spec, store=store, progress=progress, **scorer.grid_options())
    store.report()
    m = len(prompts)
    return LabelledResult(
        kind=spec.kind,
        dims=(*axes, "example"),
        coords={**{d: tuple(labels) for d, labels in axes.items()}, "example": tuple(range(m))},
        values={v: res.tensor(v, *axes.values(), fill=fill) for v in ("logodds", "refused")},
        baselines=_compliant_baselines(scorer, groups, prompts, base, res.clean.get("compliant")),
        metric=FIRST_TOKEN_REFUSAL,
        config={**config, **state.config(), "n": m, "seed": seed},
        provenance=provenance(model, seed=seed),
    )


def sweep_cells(
    persona: DirectionSet, request: str, layers: Sequence[int], alphas: Sequence[float], units: str = "raw"
) -> dict[tuple, tuple[Steer, list]]:
    """The steering sweep's cells for one request kind, layer-major: ``(request, layer, alpha)`` ->
    (the steering, the interventions its cell runs). A zero shift leaves every activation
    bit-identical, so an ``alpha = 0`` cell runs none: it is the clean run."""
    out = {}
    for layer in layers:
        for a in alphas:
            steer = Steer(persona, alpha=a, layers=[layer], units=units)
            out[(request, layer, float(a))] = (steer, [] if float(a) == 0.0 else [steer])
    return out


def reintroduction_cells(refusal: DirectionSet, layers: Sequence[int], alpha_back: float) -> dict[tuple, list]:
    """Re-introduction's cells: the refusal direction added back at one layer each, keyed ``(layer,)``."""
    return {(layer,): [AddBack(refusal, alpha=alpha_back, layers=[layer])] for layer in layers}


def window_cells(
    directions: dict[str, DirectionSet], windows: Sequence[tuple[int, int]], source_layer: int | None
) -> dict[tuple, list]:
    """Window projection's cells: each direction projected out over each window, keyed ``(direction, start, end)``."""
    return {
        (name, a, b): [Ablate(d, layers=range(a, b + 1), source_layer=source_layer)]
        for name, d in directions.items()
        for a, b in windows
    }


def window_directions(persona: DirectionSet, random_seeds: int, seed: int) -> dict[str, DirectionSet]:
    """The persona direction and its matched-norm random controls ``random<k>``."""
    return {"persona": persona} | {f"random{k}": persona.random_like(seed + k) for k in range(random_seeds)}


def _first_token(scorer: RefusalScorer, refused_as_float: bool = False) -> Callable:
    """A grid's derive: a cell's refusal log-odds and first-token refusal."""

    def derive(key: tuple, lp: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        lo, rf = scorer.from_logprobs(lp)
        return {"logodds": lo, "refused": rf.float() if refused_as_float else rf}

    return derive


def sweep_grid(
    model: ChatModel,
    persona: DirectionSet,
    groups: dict,
    scorer: RefusalScorer,
    layers: Sequence[int],
    alphas: Sequence[float],
    units: str = "raw",
    max_new_tokens: int = 0,
    judge: Any = None,
) -> GridSpec:
    """The steering sweep as a grid over ``(request, layer, alpha)`` on the safe persona's prompts."""
    from ..scoring.metrics import KLFrom

    prompts = {r: groups[f"safe/{r}"] for r in REQUESTS}
    steers: dict[tuple, Steer] = {}
    cells: dict[tuple, Scored] = {}
    for r in REQUESTS:
        for key, (steer, run) in sweep_cells(persona, r, layers, alphas, units).items():
            steer.hooks(model)  # a bad layer fails before any forward, also at alpha 0
            steers[key], cells[key] = steer, Scored(r, tuple(run))
    kl_from: dict[int, KLFrom] = {}  # per clean run: its distribution converted once for every cell
    first = _first_token(scorer)

    def derive(key: tuple, lp: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        out = first(key, lp, clean) | {"kl": kl_from.setdefault(id(clean), KLFrom(clean))(lp)}
        if max_new_tokens > 0:
            # Replies need full decoding: only the first-token scores above reuse the clean prefix.
            # A safety classifier says whether a reply is harmful; on harmless requests
            # that is no refusal judgement, so those get the heuristic labels.
            r = key[0]
            labels = scorer.labels(
                prompts[r], steers[key], max_new_tokens=max_new_tokens, judge=judge if r == "harmful" else None
            )
            out["gen_refusal"] = torch.tensor([x == "refusal" for x in labels])
            out["gen_degenerate"] = torch.tensor([x == "degenerate" for x in labels])
        return out

    return GridSpec("steering_sweep", cells, prompts=prompts, derive=derive, desc="steering sweep")


def steering_sweep(
    model: ChatModel,
    persona: DirectionSet,
    *,
    layers: Sequence[int] | None = None,
    alphas: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0),
    units: str = "raw",
    n: int = 32,
    seed: int = 0,
    scorer: RefusalScorer | None = None,
    groups: dict | None = None,
    max_new_tokens: int = 0,
    judge: Any = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> LabelledResult:
    """Refusal under the safe persona vs persona-steering strength, per layer.

    Values per (request, layer, alpha, example): ``logodds`` and ``refused`` (first token) and
    ``kl`` (first-token KL from the unsteered model: how much the steering changes behaviour).
    With ``max_new_tokens > 0`` replies are generated and labelled (``judge`` or the heuristic
    labels): ``gen_refusal`` and ``gen_degenerate`` -- the degenerate rate shows induced weirdness.
    ``checkpoint``: a folder that keeps every finished cell (see :mod:`persona_gate.grid.store`);
    a sweep interrupted by an exception or a kill resumes from it.
    """
    if isinstance(alphas, (str, bytes)) or not len(alphas):
        raise InterventionError(
            f"alphas must hold at least one steering strength, got {alphas!r}; pass e.g. (0.0, 2.0, 4.0)."
        )
    groups, scorer = experiment_setup(model, n, seed, scorer, groups)
    layers = experiment_layers(model, layers)
    alphas = [float(a) for a in alphas]
    spec = sweep_grid(model, persona, groups, scorer, layers, alphas, units, max_new_tokens, judge)
    store = open_store(
        checkpoint,
        "steering_sweep",
        direction=persona,
        prompts=dict(spec.prompts),
        layers=layers,
        alphas=alphas,
        units=units,
        tokens=list(scorer.token_ids),
        max_new_tokens=max_new_tokens,
        judge=getattr(judge, "name", None),
    )
    res = run_grid(model, spec, store=store, progress=progress, **scorer.grid_options())
    store.report()
    names = ["logodds", "refused", "kl"] + (["gen_refusal", "gen_degenerate"] if max_new_tokens > 0 else [])
    values = {v: res.tensor(v, REQUESTS, layers, alphas) for v in names}
    m = len(spec.prompts["harmful"])
    base = {
        r: scorer.from_logprobs(res.clean[r] if r in res.clean else scorer.logprobs(spec.prompts[r])) for r in REQUESTS
    }
    return LabelledResult(
        kind="steering_sweep",
        dims=("request", "layer", "alpha", "example"),
        coords={"request": REQUESTS, "layer": tuple(layers), "alpha": tuple(alphas), "example": tuple(range(m))},
        values=values,
        baselines={f"unsteered_{r}_refusal_rate": _rate(base[r][1]) for r in REQUESTS}
        | {f"unsteered_{r}_logodds": round(float(base[r][0].mean()), 4) for r in REQUESTS},
        metric=FIRST_TOKEN_REFUSAL,
        config={
            "direction": persona.name,
            "position": persona.position,
            "units": units,
            "n": m,
            "seed": seed,
            "persona": "safe",
            "refusal_tokens": list(scorer.token_ids),
            "max_new_tokens": max_new_tokens,
            "judge": getattr(judge, "name", None) if judge is not None else ("heuristic" if max_new_tokens else None),
        },
        provenance=provenance(model, seed=seed),
    )


def compliant_grid(
    kind: str, cells: dict[tuple, list], prompts: list, base: list, derive: Callable, desc: str
) -> GridSpec:
    """A grid of ``cells`` (key -> interventions) scored on the compliant state's ``prompts``, under
    its ``base`` interventions (none when the compliant persona's prompts make it)."""
    scored = {k: Scored("compliant", tuple(v)) for k, v in cells.items()}
    return GridSpec(kind, scored, prompts={"compliant": prompts}, derive=derive, base=tuple(base), desc=desc)


def reintroduction_grid(
    refusal: DirectionSet, prompts: list, base: list, scorer: RefusalScorer, layers: Sequence[int], alpha_back: float
) -> GridSpec:
    """Re-introduction as a grid over ``(layer,)`` under the compliant state."""
    cells = reintroduction_cells(refusal, layers, alpha_back)
    return compliant_grid("reintroduction", cells, prompts, base, _first_token(scorer), "re-introduction")


def reintroduction(
    model: ChatModel,
    persona: DirectionSet,
    refusal: DirectionSet,
    *,
    layers: Sequence[int] | None = None,
    alpha_back: float = 1.0,
    mode: str = "prompt",
    steer_layer: int | None = None,
    steer_alpha: float | None = None,
    n: int = 32,
    seed: int = 0,
    scorer: RefusalScorer | None = None,
    groups: dict | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> LabelledResult:
    """Under the compliant state, add the refusal direction back at each layer in turn.

    ``checkpoint``: a folder keeping every finished layer (see :mod:`persona_gate.grid.store`).
    """
    groups, scorer = experiment_setup(model, n, seed, scorer, groups)
    layers = experiment_layers(model, layers)
    return _compliant_experiment(
        model,
        scorer,
        groups,
        CompliantState(mode, steer_layer, steer_alpha),
        persona,
        lambda prompts, base: reintroduction_grid(refusal, prompts, base, scorer, layers, alpha_back),
        axes={"layer": layers},
        config={"persona": persona.name, "refusal": refusal.name, "alpha_back": alpha_back},
        fingerprint=dict(
            persona=persona, refusal=refusal, layers=layers, alpha_back=alpha_back, tokens=list(scorer.token_ids)
        ),
        seed=seed,
        checkpoint=checkpoint,
        progress=progress,
    )


FULL_GRID_LAYERS = 12  # up to this depth the default windows are the full start x end grid


def search_widths(n_layers: int) -> list[int]:
    """The window widths the gate search needs on a deep model: 1, 2, 4 and half the model."""
    return sorted({w for w in (1, 2, 4, math.ceil(n_layers / 2)) if w <= n_layers})


def window_spans(n_layers: int, width: int | None) -> list[tuple[int, int]]:
    """Every window ``(start, end)`` (inclusive) of ``width`` layers; ``width=None``: the windows the
    gate search needs -- the full start x end grid on a model of up to :data:`FULL_GRID_LAYERS`
    layers, else every window of each of :func:`search_widths`."""
    if width:
        return [(a, a + width - 1) for a in range(n_layers - width + 1)]
    if n_layers > FULL_GRID_LAYERS:
        return [w for k in search_widths(n_layers) for w in window_spans(n_layers, k)]
    return [(a, b) for a in range(n_layers) for b in range(a, n_layers)]


def window_grid(
    directions: dict[str, DirectionSet],
    windows: Sequence[tuple[int, int]],
    source_layer: int | None,
    prompts: list,
    base: list,
    scorer: RefusalScorer,
) -> GridSpec:
    """Window projection as a grid over ``(direction, start, end)`` under the compliant state."""
    cells = window_cells(directions, windows, source_layer)
    return compliant_grid("window_projection", cells, prompts, base, _first_token(scorer, True), "window projection")


def _check_windows(
    persona: DirectionSet, windows: Sequence[tuple[int, int]], n_layers: int, source_layer: int | None
) -> list[tuple[int, int]]:
    """The windows, each checked against the model and the set's layers before any work."""
    if not windows:
        raise InterventionError("no windows to run; pass width <= n_layers or explicit windows.")
    windows = [(check_layer(a, n_layers), check_layer(b, n_layers)) for a, b in windows]
    have = set(persona.layers)
    for a, b in windows:
        if b < a:
            raise InterventionError(f"window [{a}, {b}] ends before it starts; pass (start, end) with start <= end.")
        missing = [layer for layer in range(a, b + 1) if layer not in have]
        if source_layer is None and missing:
            raise InterventionError(
                f"window [{a}, {b}] needs the persona direction at layers {missing}, which the set lacks; "
                "fit directions at every layer, or pass source_layer= to use one layer's direction throughout."
            )
    return windows


def window_projection(
    model: ChatModel,
    persona: DirectionSet,
    *,
    width: int | None = None,
    windows: Sequence[tuple[int, int]] | None = None,
    source_layer: int | None = None,
    random_seeds: int = 5,
    mode: str = "prompt",
    steer_layer: int | None = None,
    steer_alpha: float | None = None,
    n: int = 32,
    seed: int = 0,
    scorer: RefusalScorer | None = None,
    groups: dict | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> LabelledResult:
    """Project the persona direction out over windows [start, end] (inclusive) of layers.

    ``windows`` lists them; else ``width`` gives every window of that width; else the windows the
    gate search needs (:func:`window_spans`: the full start x end grid on a small model). Cells not run are NaN. Direction ``persona`` and ``random<k>`` (matched-norm
    random directions, ``random_seeds`` of them) are ablated over the same windows.
    ``checkpoint``: a folder keeping every finished cell (see :mod:`persona_gate.grid.store`).
    """
    groups, scorer = experiment_setup(model, n, seed, scorer, groups)
    L = int(model.cfg.n_layers)
    windows = _check_windows(persona, window_spans(L, width) if windows is None else windows, L, source_layer)
    if random_seeds < 1:
        raise InterventionError("random_seeds must be >= 1: the random control band is the point of the experiment.")
    directions = window_directions(persona, random_seeds, seed)
    return _compliant_experiment(
        model,
        scorer,
        groups,
        CompliantState(mode, steer_layer, steer_alpha),
        persona,
        lambda prompts, base: window_grid(directions, windows, source_layer, prompts, base, scorer),
        axes={"direction": list(directions), "start": range(L), "end": range(L)},
        config={
            "persona": persona.name,
            "windows": [list(w) for w in windows],
            "width": width,
            "source_layer": source_layer,
            "random_seeds": random_seeds,
        },
        fingerprint=dict(
            directions=list(directions.values()),
            windows=[list(w) for w in windows],
            source_layer=source_layer,
            tokens=list(scorer.token_ids),
        ),
        seed=seed,
        checkpoint=checkpoint,
        progress=progress,
        fill=float("nan"),
    )


def restoration(rate: float, baseline: float, compliant: float) -> float:
    """0 = the compliant state, 1 = the safe baseline (NaN if the two coincide)."""
    gap = baseline - compliant
    return float("nan") if abs(gap) < 1e-9 else (rate - compliant) / gap
