"""The pipeline's stages, declared once: what each computes, loads, costs and how the report titles it.

:data:`STAGES` is the one table that :func:`~persona_gate.experiments.pipeline.run_pipeline`
runs, :func:`~persona_gate.experiments.plan.plan_run` costs and ``summary.json`` records for the
HTML report. Each :class:`Stage` has a ``name`` (its folder in the run directory), a ``title``,
``compute(ctx)`` (the artefact, or ``(subfolder, artefact)`` pairs), ``load(path, ctx)``,
``cost(ctx) -> (cells, Cost, exact)`` and ``enabled(cfg)``. The grids a stage runs are built by
the same builders for the run and for its cost (:mod:`~persona_gate.experiments.paper`,
:mod:`~persona_gate.experiments.patching`), so the plan counts what the run executes.

Example::

    [s.name for s in STAGES if s.enabled(cfg)]
    # ['directions', 'steering_sweep', 'reintroduction', 'window_projection', 'patching', 'direction_patching']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.directions import DirectionSet
from ..grid import Cost, cost_grid
from ..grid.cost import batch_shapes
from ..models.adapter import unembedded_rows
from ..models.protocol import ChatModel
from ..results import LabelledResult


@dataclass
class Context:
    """What the stages of one run share: the config, the model, the run folder, the evaluation
    groups and scorer, the windows, and the directions once fitted (placeholders in a plan)."""

    cfg: Any
    model: ChatModel
    out: Path | None
    groups: dict
    scorer: Any
    windows: list[tuple[int, int]] | None
    progress: bool = True
    refusal: DirectionSet | None = None
    persona: DirectionSet | None = None
    results: dict[str, Any] = field(default_factory=dict)

    def cells(self, stage: str) -> Path | None:
        """The cell store folder of ``stage`` (none in a plan)."""
        return None if self.out is None else self.out / "cells" / stage

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    def common(self) -> dict[str, Any]:
        return dict(scorer=self.scorer, groups=self.groups, progress=self.progress, seed=self.cfg.seed)

    def patch_pairs(self) -> tuple[list, list]:
        k = min(self.cfg.patch_examples, len(self.groups["safe/harmful"]))
        return self.groups["safe/harmful"][:k], self.groups["compliant/harmful"][:k]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline (see the module docstring); ``split``: its cells are shared out
    over the processes of a torchrun / accelerate run (else process 0 computes it)."""

    name: str
    title: str
    compute: Callable[[Context], Any]
    load: Callable[[Path, Context], Any]
    cost: Callable[[Context], tuple[int, Cost, bool]]
    enabled: Callable[[Any], bool] = lambda cfg: True
    split: bool = True


def _load_result(path: Path, ctx: Context) -> LabelledResult:
    return LabelledResult.load(path)


def full_pass_cost(t: Cost, model: ChatModel, shapes: list[tuple[int, int]], blocks: int, head: bool = True) -> None:
    for rows, seq in shapes:
        t.add(rows, seq, blocks, unembedded_rows(model, rows, seq) if head else 0)


def generation_cost(t: Cost, model: ChatModel, shapes: list[tuple[int, int]], steps: int) -> None:
    """Greedy decoding with the KV cache: the prompt once, then up to ``steps - 1`` one-token steps."""
    L = int(model.cfg.n_layers)
    for rows, seq in shapes:
        t.add(rows, seq, L, rows)
        t.generated += rows * max(steps - 1, 0)
        t.block_tokens += rows * max(steps - 1, 0) * L
        t.head_rows += rows * max(steps - 1, 0)


def _fit_layers(ctx: Context) -> list[int]:
    return list(ctx.cfg.layers) if ctx.cfg.layers is not None else list(range(ctx.n_layers))


# ---------------------------------------------------------------- directions


def _fit(ctx: Context) -> tuple:
    from ..core.contrasts import fit_persona_and_refusal

    cfg = ctx.cfg
    pr = fit_persona_and_refusal(
        ctx.model, layers=cfg.layers, n_per_group=cfg.n_fit, progress=ctx.progress, seed=cfg.seed
    )
    return (("refusal", pr.refusal), ("persona", pr.persona))


def _load_dirs(path: Path, ctx: Context) -> tuple[DirectionSet, DirectionSet]:
    return DirectionSet.load(path / "refusal", model=ctx.model), DirectionSet.load(path / "persona", model=ctx.model)


def _fit_cost(ctx: Context) -> tuple[int, Cost, bool]:
    """One streaming pass, stopped at the last requested layer's resid_pre."""
    from ..core.contrasts import standard_prompts

    t = Cost()
    train = standard_prompts(model=ctx.model, n_per_group=ctx.cfg.n_fit, seed=ctx.cfg.seed)
    full_pass_cost(t, ctx.model, batch_shapes(ctx.model, train, 16), max(_fit_layers(ctx)), head=False)
    return 1, t, True


# ---------------------------------------------------------------- the paper's three experiments


def _sweep(ctx: Context) -> LabelledResult:
    from .paper import steering_sweep

    return steering_sweep(
        ctx.model,
        ctx.persona,
        layers=ctx.cfg.layers,
        alphas=ctx.cfg.alphas,  # type: ignore[arg-type]
        checkpoint=ctx.cells("steering_sweep"),
        **ctx.common(),
    )


def _sweep_cost(ctx: Context) -> tuple[int, Cost, bool]:
    from .paper import experiment_layers, sweep_grid

    layers = experiment_layers(ctx.model, ctx.cfg.layers)
    spec = sweep_grid(ctx.model, ctx.persona, ctx.groups, ctx.scorer, layers, [float(a) for a in ctx.cfg.alphas])  # type: ignore[arg-type]
    cost, exact = cost_grid(ctx.model, spec, batch_size=ctx.scorer.batch_size)
    return len(spec.cells), cost, exact


def _reintroduce(ctx: Context) -> LabelledResult:
    from .paper import reintroduction

    return reintroduction(
        ctx.model,
        ctx.persona,
        ctx.refusal,
        layers=ctx.cfg.layers,
        alpha_back=ctx.cfg.alpha_back,  # type: ignore[arg-type]
        checkpoint=ctx.cells("reintroduction"),
        **ctx.common(),
    )


def _baseline_cost(ctx: Context, spec: Any) -> tuple[int, Cost, bool]:
    """A compliant-state grid and the safe baseline it is measured against (a full pass)."""
    cost, exact = cost_grid(ctx.model, spec, batch_size=ctx.scorer.batch_size)
    full_pass_cost(
        cost, ctx.model, batch_shapes(ctx.model, ctx.groups["safe/harmful"], ctx.scorer.batch_size), ctx.n_layers
    )
    return len(spec.cells), cost, exact


def _reintroduce_cost(ctx: Context) -> tuple[int, Cost, bool]:
    from .paper import compliant_state, experiment_layers, reintroduction_grid

    prompts, base = compliant_state(ctx.persona, ctx.groups, "prompt", None, None)  # type: ignore[arg-type]
    layers = experiment_layers(ctx.model, ctx.cfg.layers)
    return _baseline_cost(ctx, reintroduction_grid(ctx.refusal, prompts, base, ctx.scorer, layers, ctx.cfg.alpha_back))  # type: ignore[arg-type]


def _windows(ctx: Context) -> LabelledResult:
    from .paper import window_projection

    return window_projection(
        ctx.model,
        ctx.persona,
        width=ctx.cfg.window_width,
        windows=ctx.windows,  # type: ignore[arg-type]
        random_seeds=ctx.cfg.random_seeds,
        checkpoint=ctx.cells("window_projection"),
        **ctx.common(),
    )


def _windows_cost(ctx: Context) -> tuple[int, Cost, bool]:
    from .paper import compliant_state, window_directions, window_grid, window_spans

    prompts, base = compliant_state(ctx.persona, ctx.groups, "prompt", None, None)  # type: ignore[arg-type]
    windows = ctx.windows or window_spans(ctx.n_layers, ctx.cfg.window_width)
    dirs = window_directions(ctx.persona, ctx.cfg.random_seeds, ctx.cfg.seed)  # type: ignore[arg-type]
    return _baseline_cost(ctx, window_grid(dirs, windows, None, prompts, base, ctx.scorer))


# ---------------------------------------------------------------- patching and extraction sites


def _patching(ctx: Context, stage: str, **options: Any) -> LabelledResult:
    """The patching map of the run's pairs at every role's slots, checkpointed under ``cells/<stage>``."""
    from .patching import activation_patching

    source, target = ctx.patch_pairs()
    return activation_patching(
        ctx.model,
        source,
        target,
        ctx.scorer.token_ids,
        positions="roles",
        progress=ctx.progress,
        checkpoint=ctx.cells(stage),
        **options,
    )


def _patch(ctx: Context) -> LabelledResult:
    return _patching(ctx, "patching")


def _direction_patch(ctx: Context) -> LabelledResult:
    """Patching only the persona-direction component (the layers the directions were fitted at)."""
    return _patching(ctx, "direction_patching", layers=ctx.cfg.layers, direction=ctx.persona)


def _patch_cost(ctx: Context, layers: list[int] | None = None) -> tuple[int, Cost, bool]:
    from ..sites import sites_for
    from .patching import align_pairs, patching_grid, render_pairs

    pairs = render_pairs(ctx.model, *ctx.patch_pairs())
    slot_sets, labels = align_pairs(ctx.model, pairs, "roles")
    sites = sites_for(ctx.model, layers, "resid_pre")
    cost, exact = cost_grid(ctx.model, patching_grid(ctx.model, pairs, slot_sets, sites, ctx.scorer.token_ids))
    return len(pairs) * len(sites) * len(labels), cost, exact


def _direction_patch_cost(ctx: Context) -> tuple[int, Cost, bool]:
    return _patch_cost(ctx, ctx.cfg.layers)


def _sites(ctx: Context) -> LabelledResult:
    from .analysis import extraction_sites

    cfg = ctx.cfg
    return extraction_sites(
        ctx.model,
        layers=cfg.layers,
        n=cfg.n_eval,
        n_fit=cfg.n_fit,
        scorer=ctx.scorer,
        groups=ctx.groups,
        seed=cfg.seed,
        progress=ctx.progress,
        checkpoint=ctx.cells("extraction_sites"),
    )


def _sites_cost(ctx: Context) -> tuple[int, Cost, bool]:
    """Refits at every position, response generation, and each position's steering and ablation grid."""
    from ..core.contrasts import standard_prompts
    from ..prompts.positions import parse_position
    from .analysis import PERSONA_POSITIONS, sites_grid
    from .paper import experiment_layers

    model, cfg = ctx.model, ctx.cfg
    t = Cost()
    fit_layers = _fit_layers(ctx)
    train = standard_prompts(model=model, n_per_group=cfg.n_fit, seed=cfg.seed)
    full_pass_cost(t, model, batch_shapes(model, train, 16), max(fit_layers), head=False)
    pos = [str(parse_position(p)) for p in PERSONA_POSITIONS]
    if "mean:response" in pos:  # replies generated for the response mean, then a second fit over prompt + reply
        generation_cost(t, model, batch_shapes(model, train, 16), 16)
        for rows, seq in batch_shapes(model, train, 16):
            t.add(rows, seq + 16, max(fit_layers), 0)
    layers = experiment_layers(model, cfg.layers)
    d = placeholder(model, fit_layers, "persona", "mean:system")
    for p in pos:
        t += cost_grid(
            model,
            sites_grid(model, p, d, ctx.groups, ctx.scorer, layers, (1.0, 2.0, 4.0)),
            batch_size=ctx.scorer.batch_size,
        )[0]
    for g in ctx.groups:
        full_pass_cost(t, model, batch_shapes(model, ctx.groups[g], ctx.scorer.batch_size), ctx.n_layers)
    return len(pos) * len(layers), t, False


def placeholder(model: ChatModel, layers: list[int], name: str, position: str) -> DirectionSet:
    """Directions of the right shape for planning before they are fitted (non-zero at every layer)."""
    from ..sites import HookSite

    g = torch.Generator().manual_seed(0)
    d = int(model.cfg.d_model)
    pos, neg = torch.randn(len(layers), d, generator=g), torch.randn(len(layers), d, generator=g)
    return DirectionSet.from_means(name, [HookSite(layer) for layer in layers], pos, neg, "a", "b", {}, position)


STAGES: tuple[Stage, ...] = (
    Stage("directions", "Persona and refusal directions", _fit, _load_dirs, _fit_cost, split=False),
    Stage("steering_sweep", "Persona steering: refusal vs steering strength", _sweep, _load_result, _sweep_cost),
    Stage(
        "reintroduction",
        "Adding the refusal direction back, one layer at a time",
        _reintroduce,
        _load_result,
        _reintroduce_cost,
    ),
    Stage(
        "window_projection",
        "Projecting the persona direction out over windows of layers",
        _windows,
        _load_result,
        _windows_cost,
    ),
    Stage(
        "patching",
        "Activation patching of the residual stream (restores wherever the persona has reached the patched position)",
        _patch,
        _load_result,
        _patch_cost,
    ),
    Stage(
        "direction_patching",
        "Directional patching: only the persona-direction component, per layer",
        _direction_patch,
        _load_result,
        _direction_patch_cost,
    ),
    Stage(
        "extraction_sites",
        "Where the persona direction is read: steering and ablation per extraction position",
        _sites,
        _load_result,
        _sites_cost,
        enabled=lambda cfg: bool(cfg.extraction_sites),
    ),
)


def stage(name: str) -> Stage:
    """The stage called ``name``."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r}; stages are {[s.name for s in STAGES]}")
