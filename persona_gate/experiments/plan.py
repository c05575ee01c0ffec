"""A cost plan of a pipeline run, made before it runs: per stage the cells, the forwards, the
tokens, and an estimated wall time (``persona-gate run --plan``).

The plan walks the stages of :func:`~persona_gate.experiments.pipeline.run_pipeline` with the
same prompt sets, batches and cell grids the run uses (the grid builders of
:mod:`~persona_gate.experiments.paper` and the prefix-reuse planner
:func:`~persona_gate.core.prefix.cells_cost`), so its counts are what the run executes; the
tests count the run's block calls with hooks and compare. Counted per stage (see
:class:`~persona_gate.core.prefix.Cost`): *forwards* (one prompt through part or all of the
model), *tokens* (padded positions those forwards take in), *block-tokens* (tokens x blocks
completed: the compute), *head rows* (positions unembedded) and *generated* steps (an upper
bound: replies end at EOS).

Time on this machine: a timing probe runs one batch of the evaluation prompts twice and
times the body per block-token and the unembedding per row; a stage's estimate is its
block-tokens and head rows at those rates (decoding steps at the body's rate, which
underestimates memory-bound decoding). On a named accelerator (``accelerator="H100"``):

    FLOPs = 2 P_block x block-tokens + 2 h d_head x sum(rows x seq^2 x blocks) + 2 d_model V x head rows
    time  = FLOPs / (peak x mfu)

with ``P_block`` the parameters of one block, ``h d_head`` the attention width (causal
attention: half of the ``4 seq^2 h d_head`` of a full score matrix), ``V`` the vocabulary, the
peak the vendor's dense bf16 figure (:data:`ACCELERATORS`) and ``mfu`` the share of it a
batched forward of this size sustains (default 0.3; an assumption, pass your own). Stages
whose folder in the run directory already loads are listed as done and cost nothing.

Example::

    plan = plan_run(RunConfig(model="organism"), model, accelerator="H100")
    print(format_plan(plan))
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..core.prefix import Cost, batch_shapes, cells_cost
from ..errors import ConfigError
from ..models.adapter import head_logits, last_logits, unembedded_rows
from ..models.loading import model_device
from ..models.protocol import ChatModel

# Peak dense bf16 tensor throughput, FLOP/s, from the vendors' datasheets (SXM parts for H100/H200).
ACCELERATORS: dict[str, float] = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L4": 121e12}
DEFAULT_MFU = 0.3


def accelerator_flops(name: str | float) -> tuple[str, float]:
    """``(label, peak FLOP/s)`` of a named accelerator, or of a number of FLOP/s such as ``4e14``."""
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        return f"{float(name):.3g} FLOP/s", float(name)
    key = str(name).strip()
    for k, v in ACCELERATORS.items():
        if k.lower() == key.lower():
            return k, v
    try:
        value = float(key)
    except ValueError:
        raise ConfigError(f"unknown accelerator {name!r}; name one of {', '.join(ACCELERATORS)} or give its peak "
                          "FLOP/s as a number, e.g. --flops 4e14.") from None  # fmt: skip
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--flops must be a positive number of FLOP/s, got {name!r}.")
    return f"{value:.3g} FLOP/s", value


def _full_pass(t: Cost, model: ChatModel, shapes: list[tuple[int, int]], blocks: int, head: bool = True) -> None:
    for rows, seq in shapes:
        t.add(rows, seq, blocks, unembedded_rows(model, rows, seq) if head else 0)


def _engine(t: Cost, model: ChatModel, prompts: list, cells: list, base: list, batch_size: int) -> None:
    t += cells_cost(model, prompts, cells, base=base, batch_size=batch_size)


def _placeholder(model: ChatModel, layers: list[int], name: str, position: str) -> Any:
    """Directions of the right shape for planning before they are fitted (non-zero at every layer)."""
    from ..core.directions import DirectionSet
    from ..sites import HookSite

    g = torch.Generator().manual_seed(0)
    d = int(model.cfg.d_model)
    pos, neg = torch.randn(len(layers), d, generator=g), torch.randn(len(layers), d, generator=g)
    return DirectionSet.from_means(name, [HookSite(layer) for layer in layers], pos, neg, "a", "b", {}, position)


def _generation(t: Cost, model: ChatModel, shapes: list[tuple[int, int]], steps: int) -> None:
    """Greedy decoding with the KV cache: the prompt once, then up to ``steps - 1`` one-token steps."""
    L = int(model.cfg.n_layers)
    for rows, seq in shapes:
        t.add(rows, seq, L, rows)
        t.generated += rows * max(steps - 1, 0)
        t.block_tokens += rows * max(steps - 1, 0) * L
        t.head_rows += rows * max(steps - 1, 0)


def plan_run(
    cfg: Any,
    model: ChatModel,
    out: str | Path | None = None,
    *,
    probe: bool = True,
    accelerator: str | float | None = None,
    mfu: float = DEFAULT_MFU,
) -> dict[str, Any]:
    """The cost plan of ``run_pipeline(cfg, out)`` on ``model`` (see the module docstring)."""
    from .. import experiments as ex
    from ..core.contrasts import standard_prompts
    from ..core.directions import DirectionSet
    from ..models.profile import profile_of
    from ..results import LabelledResult
    from .paper import compliant_state, experiment_layers, reintroduction_cells, sweep_cells, window_cells, window_directions, window_spans
    from .patching import align_pairs, render_pairs
    from .pipeline import harmful_requests, stage_done, run_windows

    if not (isinstance(mfu, (int, float)) and 0 < mfu <= 1):
        raise ConfigError(f"mfu must be a share of the peak in (0, 1], got {mfu!r}.")
    out = Path(out) if out is not None else None
    L = int(model.cfg.n_layers)
    layers = list(cfg.layers) if cfg.layers is not None else list(range(L))
    stages: list[dict[str, Any]] = []

    def done(name: str, loader: Any) -> bool:
        return out is not None and stage_done(out / name, loader)

    def stage(name: str, cells: int, tally: Cost | None, exact: bool = True) -> None:
        stages.append({"stage": name, "cells": cells, "done": tally is None, "exact": exact,
                       **dataclasses.asdict(tally if tally is not None else Cost())})  # fmt: skip

    # directions: one streaming pass, stopped at the last requested layer's resid_pre.
    def load_dirs(p: Path) -> tuple:
        return DirectionSet.load(p / "refusal", model=model), DirectionSet.load(p / "persona", model=model)

    if done("directions", load_dirs):
        refusal, persona = load_dirs(out / "directions")  # type: ignore[operator]
        stage("directions", 1, None)
    else:
        t = Cost()
        train = standard_prompts(model=model, n_per_group=cfg.n_fit, seed=cfg.seed)
        _full_pass(t, model, batch_shapes(model, train, 16), max(layers), head=False)
        stage("directions", 1, t)
        refusal, persona = _placeholder(model, layers, "refusal", "last"), _placeholder(model, layers, "persona", "mean:system")

    phrases = cfg.refusal_phrases if cfg.refusal_phrases is not None else profile_of(model).refusal_phrases
    if phrases is None:  # refusal tokens derived from the model's own replies (RefusalScorer.for_model)
        t = Cost()
        harmful = ex.eval_groups(model, 16, split="train")["safe/harmful"]
        _generation(t, model, batch_shapes(model, harmful, 16), 12)
        stage("refusal_tokens", 1, t, exact=False)
    bs = ex.RefusalScorer.batch_size  # the pipeline's scorer keeps the default batch
    groups = ex.eval_groups(model, cfg.n_eval, seed=cfg.seed, harmful=harmful_requests(cfg))
    sweep_layers = experiment_layers(model, cfg.layers)

    if done("steering_sweep", LabelledResult.load):
        stage("steering_sweep", 2 * len(sweep_layers) * len(cfg.alphas), None)
    else:
        t = Cost()
        for r in ("harmful", "harmless"):
            grid = sweep_cells(persona, r, sweep_layers, cfg.alphas)
            _engine(t, model, groups[f"safe/{r}"], [run for _, run in grid.values()], [], bs)
        stage("steering_sweep", 2 * len(sweep_layers) * len(cfg.alphas), t)

    prompts, specs = compliant_state(persona, groups, "prompt", None, None)
    safe_shapes = batch_shapes(model, groups["safe/harmful"], bs)
    if done("reintroduction", LabelledResult.load):
        stage("reintroduction", len(sweep_layers), None)
    else:
        t = Cost()
        _engine(t, model, prompts, list(reintroduction_cells(refusal, sweep_layers, cfg.alpha_back).values()), specs, bs)
        _full_pass(t, model, safe_shapes, L)  # the safe baseline
        stage("reintroduction", len(sweep_layers), t)

    windows = run_windows(cfg, L) or window_spans(L, cfg.window_width)
    n_window_cells = (1 + cfg.random_seeds) * len(windows)
    if done("window_projection", LabelledResult.load):
        stage("window_projection", n_window_cells, None)
    else:
        t = Cost()
        cells = window_cells(window_directions(persona, cfg.random_seeds, cfg.seed), windows, None)
        _engine(t, model, prompts, list(cells.values()), specs, bs)
        _full_pass(t, model, safe_shapes, L)
        stage("window_projection", n_window_cells, t)

    k = min(cfg.patch_examples, len(groups["safe/harmful"]))
    pairs = render_pairs(model, groups["safe/harmful"][:k], groups["compliant/harmful"][:k])
    slot_sets, labels = align_pairs(model, pairs, "roles")
    if done("patching", LabelledResult.load):
        stage("patching", k * L * len(labels), None)
    else:
        t = Cost()
        for (src, tgt), slots in zip(pairs, slot_sets):
            for rp in (src, tgt):  # the two clean runs, recording block inputs
                t.add(1, len(rp), L, unembedded_rows(model, 1, len(rp)))
            for layer in range(L):
                for c in range(0, len(slots), 32):
                    rows = len(slots[c : c + 32]) + 1  # one unpatched reference row per batch
                    t.add(rows, len(tgt), L - layer, rows)
        stage("patching", k * L * len(labels), t)

    if cfg.extraction_sites:
        if done("extraction_sites", LabelledResult.load):
            stage("extraction_sites", 0, None)
        else:
            stage("extraction_sites", *_sites_cost(model, cfg, groups, sweep_layers, bs))

    probe_rates = _probe(model, groups["safe/harmful"], bs) if probe else None
    peak = accelerator_flops(accelerator) if accelerator is not None else None
    per_block = _block_parameters(model)
    heads = int(model.cfg.n_heads) * int(model.cfg.d_head)
    for s in stages:
        s["flops"] = 2 * per_block * s["block_tokens"] + 2 * heads * s["attention"] + 2 * int(model.cfg.d_model) * int(model.cfg.d_vocab) * s["head_rows"]
        if probe_rates is not None:
            s["seconds_here"] = s["block_tokens"] * probe_rates["block_token_s"] + s["head_rows"] * probe_rates["head_row_s"]
        if peak is not None:
            s["seconds_on_accelerator"] = s["flops"] / (peak[1] * mfu)
    totals = {key: sum(s[key] for s in stages) for key in ("cells", "forwards", "tokens", "block_tokens", "head_rows", "generated", "flops")}
    for key in ("seconds_here", "seconds_on_accelerator"):
        if stages and key in stages[0]:
            totals[key] = sum(s[key] for s in stages)
    return {
        "model": cfg.model,
        "n_layers": L,
        "stages": stages,
        "total": totals,
        "probe": probe_rates,
        "accelerator": None if peak is None else {"name": peak[0], "peak_flops": peak[1], "mfu": mfu},
        "flops_model": {"block_parameters": per_block, "attention_width": heads, "d_model": int(model.cfg.d_model),
                        "vocab": int(model.cfg.d_vocab)},
    }  # fmt: skip


def _sites_cost(model: ChatModel, cfg: Any, groups: dict, layers: list[int], bs: int) -> tuple[int, Cost, bool]:
    """The extraction-sites stage: refits at every position, response generation, steering and ablation cells."""
    from ..core.contrasts import standard_prompts
    from ..core.interventions import Ablate, Steer
    from ..prompts.positions import parse_position
    from .analysis import PERSONA_POSITIONS

    t = Cost()
    L = int(model.cfg.n_layers)
    train = standard_prompts(model=model, n_per_group=cfg.n_fit, seed=cfg.seed)
    _full_pass(t, model, batch_shapes(model, train, 16), max(layers), head=False)
    pos = [str(parse_position(p)) for p in PERSONA_POSITIONS]
    exact = "mean:response" not in pos
    if not exact:  # replies generated for the response mean, then a second fit over prompt + reply
        _generation(t, model, batch_shapes(model, train, 16), 16)
        for rows, seq in batch_shapes(model, train, 16):
            t.add(rows, seq + 16, max(layers), 0)
    d = _placeholder(model, layers, "persona", "mean:system")
    every = range(L)
    for _ in pos:
        _engine(t, model, groups["safe/harmful"], [[Steer(d, alpha=a, layers=[layer])] for layer in layers for a in (1.0, 2.0, 4.0)], [], bs)
        ablate = [[Ablate(d, layers=every, source_layer=layer)] for layer in layers]
        _engine(t, model, groups["compliant/harmful"], ablate, [], bs)
        _engine(t, model, groups["compliant/harmless"], ablate, [], bs)
    for g in groups:
        _full_pass(t, model, batch_shapes(model, groups[g], bs), L)
    return len(pos) * len(layers), t, False


def _block_parameters(model: ChatModel) -> int:
    blocks = getattr(model, "blocks", None)
    if not blocks:
        return 0
    seen: set[int] = set()
    total = 0
    for block in blocks:
        for p in block.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total // len(blocks)


def _probe(model: ChatModel, prompts: list, batch_size: int) -> dict[str, float]:
    """Seconds per block-token and per unembedded row on this machine, from one batch run twice."""
    from ..core.activations import as_rendered, padded_batches

    rendered = as_rendered(model, prompts)
    pb = next(padded_batches(rendered, batch_size, model.tokenizer.pad_token_id))
    device = model_device(model)
    ids, mask = pb.input_ids.to(device), pb.attention_mask.to(device)
    rows, seq = ids.shape
    x = torch.zeros((rows, int(model.cfg.d_model)), dtype=next(model.parameters()).dtype, device=device)
    full, head = [], []
    with torch.no_grad():
        for _ in range(2):
            t = time.perf_counter()
            last_logits(model, ids, mask)
            full.append(time.perf_counter() - t)
            t = time.perf_counter()
            head_logits(model, x)
            head.append(time.perf_counter() - t)
    t_full, t_head = min(full), min(head)
    L = int(model.cfg.n_layers)
    return {"block_token_s": max(t_full - t_head, 1e-9) / (rows * seq * L), "head_row_s": t_head / rows,
            "batch": [int(rows), int(seq)], "forward_s": round(t_full, 4)}  # fmt: skip


def _si(x: float | int) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def _duration(s: float | int | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms" if s >= 1e-3 else "<1 ms"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a table (what ``persona-gate run --plan`` prints)."""
    acc = plan["accelerator"]
    head = ["stage", "cells", "forwards", "tokens", "block-tokens", "FLOPs", "here"] + ([f"on {acc['name']}"] if acc else [])
    rows = []
    for s in [*plan["stages"], {"stage": "total", **plan["total"], "done": False, "exact": all(x["exact"] for x in plan["stages"])}]:
        if s.get("done"):
            rows.append([s["stage"], str(s["cells"]), "done", "", "", "", ""] + ([""] if acc else []))
            continue
        mark = "" if s.get("exact", True) else " (at most)"
        rows.append([s["stage"], str(s["cells"]), f"{s['forwards']}", _si(s["tokens"]), _si(s["block_tokens"]) + mark, _si(s["flops"]),
                     _duration(s.get("seconds_here"))] + ([_duration(s.get("seconds_on_accelerator"))] if acc else []))  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [head, *rows]]
    notes = [f"plan for {plan['model']} ({plan['n_layers']} layers); forwards count prompts (a re-run of one cell over "
             "one prompt is one), tokens are padded positions, block-tokens = tokens x blocks run."]
    if plan["probe"]:
        p = plan["probe"]
        notes.append(f"'here': a timing probe of one {p['batch'][0]} x {p['batch'][1]} batch on this machine "
                     f"({p['forward_s']:.3f} s per forward).")
    if acc:
        notes.append(f"'on {acc['name']}': FLOPs / ({acc['peak_flops']:.3g} FLOP/s peak x {acc['mfu']} utilisation), "
                     "an estimate: the utilisation is an assumption (--mfu).")
    return "\n".join(lines + [""] + notes)
