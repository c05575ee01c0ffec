"""A cost plan of a pipeline run, made before it runs: per stage the cells, the forwards, the
tokens, and an estimated wall time (``persona-gate run --plan``).

The plan walks the stages of :func:`~persona_gate.experiments.pipeline.run_pipeline` with the
same prompt sets, batches and cell grids the run uses (the grid builders of
:mod:`~persona_gate.experiments.paper` and the prefix-reuse planner
:func:`~persona_gate.grid.cost.cost_grid`), so its counts are what the run executes; the
tests count the run's block calls with hooks and compare. Counted per stage (see
:class:`~persona_gate.grid.cost.Cost`): *forwards* (one prompt through part or all of the
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

Memory: the weights (every parameter once, in the run's dtype) and, per stage, the peak of the
*prefix records* -- the block inputs that prefix reuse keeps on the device for a whole grid call
(every padded batch's residual stream at each first layer a cell re-runs from:
``layers x rows x seq x d_model`` values; activation patching keeps both prompts' block inputs and
site activations per pair), counted by :class:`~persona_gate.grid.cost.Cost` ``records`` and
priced at the weights' bytes per value. Activations of a forward in flight are not counted.

Without weights: ``model`` may be a :func:`~persona_gate.models.weightless.load_weightless` model,
built from the model's ``config.json`` alone on the meta device (``plan_config`` in the run's
config; ``persona-gate run --plan`` then loads no weights and uses no network). Its counts are
the loaded model's (the tests compare every stage on every tiny architecture) where a
``tokenizer.json`` comes with the config; without one, tokens are estimated by the rule of
:mod:`~persona_gate.models.weightless` and the plan says so. Nothing is timed (no probe), and a
public ``harmful_dataset`` not in the download cache is stood in for by persona_gate's own harmful
test split (a note in the plan).

The plan is a typed :class:`Plan` (one :class:`PlanStage` per stage, the totals, the probe, the
accelerator, the FLOP model's constants, the weights' size and the notes printed under the table); its JSON form is what ``--plan-json`` writes, and it
reads like that JSON too (``plan["stages"][0]["forwards"]``).

Example::

    plan = plan_run(RunConfig(model="organism"), model, accelerator="H100")
    print(format_plan(plan)); plan.total["flops"]; plan.stages[0].block_tokens
    plan = plan_run(cfg, load_weightless("paper/llama-3.1-8b-instruct", dtype="bfloat16"))
    plan.weights_bytes, plan.total["record_bytes"]           # 16.1e9 bytes, the largest stage's records
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DatasetError
from ..grid import Cost
from ..grid.cost import batch_shapes
from ..io import Record
from ..models.adapter import block_parameters, head_logits, last_logits, weights_size
from ..models.loading import model_device
from ..models.protocol import ChatModel

# Peak dense bf16 tensor throughput, FLOP/s, from the vendors' datasheets (SXM parts for H100/H200).
ACCELERATORS: dict[str, float] = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L4": 121e12}
DEFAULT_MFU = 0.3


@dataclass(frozen=True)
class PlanStage(Record):
    """One stage of a plan: its ``cells``, whether it is ``done`` (its folder loads: it costs
    nothing), whether the counts are ``exact`` (else an upper bound), the counts of
    :class:`~persona_gate.grid.cost.Cost`, the FLOPs, the peak bytes of its prefix records, and the
    estimated seconds here (timing probe) and on the accelerator (None when not estimated: absent
    from the JSON)."""

    stage: str
    cells: int
    done: bool
    exact: bool
    cost: Cost = dataclasses.field(default_factory=Cost)
    flops: int = 0
    seconds_here: float | None = None
    seconds_on_accelerator: float | None = None
    record_bytes: int = 0

    def __getattr__(self, name: str) -> Any:  # the counts read as the stage's own: stage.block_tokens
        if name in _COUNTS:
            return getattr(self.cost, name)
        raise AttributeError(name)

    def _body(self) -> dict[str, Any]:
        d = {"stage": self.stage, "cells": self.cells, "done": self.done, "exact": self.exact}
        d |= dataclasses.asdict(self.cost) | {"flops": self.flops, "record_bytes": self.record_bytes}
        for key in ("seconds_here", "seconds_on_accelerator"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    @classmethod
    def _from_body(cls, d: dict[str, Any]) -> PlanStage:
        cost = Cost(**{k: d.get(k, 0) for k in _COUNTS})  # plans written before records were counted: 0
        return cls(
            d["stage"],
            d["cells"],
            d["done"],
            d["exact"],
            cost,
            d["flops"],
            d.get("seconds_here"),
            d.get("seconds_on_accelerator"),
            d.get("record_bytes", 0),
        )


_COUNTS = tuple(f.name for f in dataclasses.fields(Cost))


@dataclass(frozen=True)
class Plan(Record):
    """The cost plan of a run (module docstring): per-stage rows, their ``total`` (cells, counts,
    FLOPs, the seconds estimated and the largest stage's ``record_bytes``), the timing ``probe``
    (None without one), the ``accelerator`` (name, peak FLOP/s, utilisation; None without one), the
    FLOP model's constants, the weights (``parameters``, ``weights_bytes`` in ``dtype``), whether the
    plan was made ``weightless`` (from ``config.json`` alone) with ``tokens_estimated``, and ``notes``."""

    DOCUMENT = True

    model: str
    n_layers: int
    stages: tuple[PlanStage, ...]
    total: Mapping[str, Any]
    probe: Mapping[str, Any] | None
    accelerator: Mapping[str, Any] | None
    flops_model: Mapping[str, int]
    dtype: str = "float32"
    parameters: int = 0
    weights_bytes: int = 0
    weightless: bool = False
    tokens_estimated: bool = False
    notes: tuple[str, ...] = ()

    def _body(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "stages": [s.to_dict() for s in self.stages],
            "total": dict(self.total),
            "probe": None if self.probe is None else dict(self.probe),
            "accelerator": None if self.accelerator is None else dict(self.accelerator),
            "flops_model": dict(self.flops_model),
            "dtype": self.dtype,
            "parameters": self.parameters,
            "weights_bytes": self.weights_bytes,
            "weightless": self.weightless,
            "tokens_estimated": self.tokens_estimated,
            "notes": list(self.notes),
        }

    @classmethod
    def _from_body(cls, d: dict[str, Any]) -> Plan:
        stages = tuple(PlanStage.from_dict(s) for s in d["stages"])
        more = {k: d[k] for k in ("dtype", "parameters", "weights_bytes", "weightless", "tokens_estimated") if k in d}
        return cls(
            d["model"],
            d["n_layers"],
            stages,
            d["total"],
            d["probe"],
            d["accelerator"],
            d["flops_model"],
            notes=tuple(d.get("notes", ())),
            **more,
        )


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
        raise ConfigError(
            f"unknown accelerator {name!r}; name one of {', '.join(ACCELERATORS)} or give its peak "
            "FLOP/s as a number, e.g. --flops 4e14."
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--flops must be a positive number of FLOP/s, got {name!r}.")
    return f"{value:.3g} FLOP/s", value


def plan_run(
    cfg: Any,
    model: ChatModel,
    out: str | Path | None = None,
    *,
    probe: bool = True,
    accelerator: str | float | None = None,
    mfu: float = DEFAULT_MFU,
) -> Plan:
    """The cost plan of ``run_pipeline(cfg, out)`` on ``model`` (see the module docstring): every
    enabled stage of :data:`~persona_gate.experiments.stages.STAGES`, costed by its own ``cost``.
    ``model``: the loaded model, or one without weights (:func:`~persona_gate.models.weightless.load_weightless`:
    then nothing is timed and nothing downloaded)."""
    from ..models.profile import profile_of
    from ..scoring.refusal import RefusalScorer, eval_groups
    from .pipeline import run_windows, stage_done
    from .stages import STAGES, Context, generation_cost, placeholder

    if not (isinstance(mfu, (int, float)) and 0 < mfu <= 1):
        raise ConfigError(f"mfu must be a share of the peak in (0, 1], got {mfu!r}.")
    out = Path(out) if out is not None else None
    weightless = model_device(model).type == "meta"  # parameters without storage: nothing can run
    L = int(model.cfg.n_layers)
    layers = list(cfg.layers) if cfg.layers is not None else list(range(L))
    ctx = Context(
        cfg, model, None, groups={}, scorer=RefusalScorer(model, ()), windows=run_windows(cfg, L), progress=False
    )
    stages: list[PlanStage] = []
    notes: list[str] = []

    def row(name: str, cells: int, tally: Cost | None, exact: bool = True) -> None:
        stages.append(PlanStage(name, cells, tally is None, exact, tally if tally is not None else Cost()))

    for st in [s for s in STAGES if s.enabled(cfg)]:
        folder = None if out is None else out / st.name
        done = folder is not None and stage_done(folder, lambda p, st=st: st.load(p, ctx))
        if st.name != "directions":
            cells, cost, exact = st.cost(ctx)
            row(st.name, cells, None if done else cost, exact)
            continue
        if done:
            ctx.refusal, ctx.persona = st.load(folder, ctx)  # type: ignore[arg-type]
            row(st.name, 1, None)
        else:
            row(st.name, *st.cost(ctx))
            ctx.refusal, ctx.persona = (
                placeholder(model, layers, "refusal", "last"),
                placeholder(model, layers, "persona", "mean:system"),
            )
        phrases = cfg.refusal_phrases if cfg.refusal_phrases is not None else profile_of(model).refusal_phrases
        if phrases is None:  # refusal tokens derived from the model's own replies (RefusalScorer.for_model)
            t = Cost()
            harmful = eval_groups(model, 16, split="train")["safe/harmful"]
            generation_cost(t, model, batch_shapes(model, harmful, 16), 12)
            row("refusal_tokens", 1, t, exact=False)
        ctx.groups = _eval_groups(cfg, model, weightless, notes)
    return _priced(
        cfg, model, stages, ctx.groups, ctx.scorer.batch_size, probe and not weightless, accelerator, mfu, notes
    )


def _eval_groups(cfg: Any, model: ChatModel, offline: bool, notes: list[str]) -> dict:
    """The run's evaluation groups. ``offline`` (a plan without weights): a public harmful set that is
    not in the download cache is stood in for by persona_gate's own harmful test split (noted)."""
    from ..prompts.datasets import no_downloads
    from ..scoring.refusal import eval_groups
    from .pipeline import harmful_requests

    if not offline:
        harmful = harmful_requests(cfg)
    else:
        try:
            with no_downloads():
                harmful = harmful_requests(cfg)
        except DatasetError:
            harmful = None
            notes.append(
                f"harmful_dataset {cfg.harmful_dataset!r} is not in the download cache and this plan uses no "
                "network: persona_gate's own harmful test split stands in for its prompts (their number and "
                "length are estimates); set harmful_source to a local copy for the run's own prompts."
            )
    return eval_groups(model, cfg.n_eval, seed=cfg.seed, harmful=harmful)


def _priced(
    cfg: Any,
    model: ChatModel,
    stages: Sequence[PlanStage],
    groups: dict,
    batch_size: int,
    probe: bool,
    accelerator: str | float | None,
    mfu: float,
    notes: Sequence[str] = (),
) -> Plan:
    """The stages' counts with FLOPs, record bytes, a time here (timing probe of one batch of the scorer's
    ``batch_size``, the run's) and on an accelerator, and totals."""
    probe_rates = _probe(model, groups["safe/harmful"], batch_size) if probe else None
    peak = accelerator_flops(accelerator) if accelerator is not None else None
    per_block = block_parameters(model)
    parameters, weights_bytes = weights_size(model)
    dtype = next(model.parameters()).dtype
    value_bytes = torch.empty((), dtype=dtype, device="meta").element_size()
    heads = int(model.cfg.n_heads) * int(model.cfg.d_head)
    priced = []
    for s in stages:
        flops = (
            2 * per_block * s.block_tokens
            + 2 * heads * s.attention
            + 2 * int(model.cfg.d_model) * int(model.cfg.d_vocab) * s.head_rows
        )
        here = None
        if probe_rates is not None:
            here = s.block_tokens * probe_rates["block_token_s"] + s.head_rows * probe_rates["head_row_s"]
        there = flops / (peak[1] * mfu) if peak is not None else None
        priced.append(
            dataclasses.replace(
                s, flops=flops, seconds_here=here, seconds_on_accelerator=there, record_bytes=s.records * value_bytes
            )
        )
    totals = {
        key: sum(getattr(s, key) for s in priced)
        for key in ("cells", "forwards", "tokens", "block_tokens", "head_rows", "generated", "flops")
    }
    totals["record_bytes"] = max((s.record_bytes for s in priced), default=0)  # stages run one after another
    for key in ("seconds_here", "seconds_on_accelerator"):
        if priced and getattr(priced[0], key) is not None:
            totals[key] = sum(getattr(s, key) for s in priced)
    return Plan(
        model=cfg.model,
        n_layers=int(model.cfg.n_layers),
        stages=tuple(priced),
        total=totals,
        probe=probe_rates,
        accelerator=None if peak is None else {"name": peak[0], "peak_flops": peak[1], "mfu": mfu},
        flops_model={
            "block_parameters": per_block,
            "attention_width": heads,
            "d_model": int(model.cfg.d_model),
            "vocab": int(model.cfg.d_vocab),
        },
        dtype=str(dtype).removeprefix("torch."),
        parameters=parameters,
        weights_bytes=weights_bytes,
        weightless=model_device(model).type == "meta",
        tokens_estimated=bool(getattr(model, "tokens_estimated", False)),
        notes=tuple(notes),
    )


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
    return {
        "block_token_s": max(t_full - t_head, 1e-9) / (rows * seq * L),
        "head_row_s": t_head / rows,
        "batch": [int(rows), int(seq)],
        "forward_s": round(t_full, 4),
    }


def _si(x: float | int) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def _bytes(x: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x} B"


def _duration(s: float | int | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms" if s >= 1e-3 else "<1 ms"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def format_plan(plan: Plan | Mapping[str, Any]) -> str:
    """The plan as a table (what ``persona-gate run --plan`` prints); ``plan``: a :class:`Plan` or its JSON form."""
    plan = Plan.from_dict(plan)
    acc = plan["accelerator"]
    head = ["stage", "cells", "forwards", "tokens", "block-tokens", "FLOPs", "records", "here"] + (
        [f"on {acc['name']}"] if acc else []
    )
    rows = []
    for s in [
        *plan["stages"],
        {"stage": "total", **plan["total"], "done": False, "exact": all(x["exact"] for x in plan["stages"])},
    ]:
        if s.get("done"):
            rows.append([s["stage"], str(s["cells"]), "done", "", "", "", "", ""] + ([""] if acc else []))
            continue
        mark = "" if s.get("exact", True) else " (at most)"
        rows.append(
            [
                s["stage"],
                str(s["cells"]),
                f"{s['forwards']}",
                _si(s["tokens"]),
                _si(s["block_tokens"]) + mark,
                _si(s["flops"]),
                _bytes(s.get("record_bytes", 0)) + (" (peak)" if s["stage"] == "total" else ""),
                _duration(s.get("seconds_here")),
            ]
            + ([_duration(s.get("seconds_on_accelerator"))] if acc else [])
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [head, *rows]
    ]
    return "\n".join(lines + [""] + _notes(plan))


def _notes(plan: Plan) -> list[str]:
    """The lines under the plan's table: what its columns mean, the weights, how it was made."""
    notes = [
        f"plan for {plan.model} ({plan.n_layers} layers); forwards count prompts (a re-run of one cell over "
        "one prompt is one), tokens are padded positions, block-tokens = tokens x blocks run.",
        f"weights: {_bytes(plan.weights_bytes)} ({plan.parameters / 1e9:.2f} B parameters in {plan.dtype}); "
        "records: the peak memory of prefix records in a stage (block inputs kept on the device for a grid: "
        "layers x tokens x d_model values), beside the weights.",
    ]
    if plan.weightless:
        notes.append(
            "made without weights, from the model's config.json (meta device): nothing timed here."
            + (
                " Tokens are ESTIMATED (no tokenizer.json beside the config): one per word, per run of up to "
                "3 digits, per run of symbols or of whitespace, and per chat-template marker."
                if plan.tokens_estimated
                else ""
            )
        )
    if plan.probe:
        p = plan.probe
        notes.append(
            f"'here': a timing probe of one {p['batch'][0]} x {p['batch'][1]} batch on this machine "
            f"({p['forward_s']:.3f} s per forward)."
        )
    if plan.accelerator:
        acc = plan.accelerator
        notes.append(
            f"'on {acc['name']}': FLOPs / ({acc['peak_flops']:.3g} FLOP/s peak x {acc['mfu']} utilisation), "
            "an estimate: the utilisation is an assumption (--mfu)."
        )
    return notes + list(plan.notes)
