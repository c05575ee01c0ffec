"""Precision benchmark: float32 against bfloat16 / float16 on the same prompts, side by side.

For each model and low-precision dtype, against the same model in float32:

* per-layer cosine of the persona and of the refusal direction, each fitted on the same prompts
  (``fit_persona_and_refusal``, same seed); a layer whose float32 direction is zero (the refusal
  contrast at the embedding) has nothing to compare and is left out. Target: >= 0.999 at every layer;
* the share of evaluation prompts (``eval_groups``: four persona x request groups) whose
  first-token refusal decision -- the greedy first token is one of the float32 scorer's refusal
  tokens -- is the same in both dtypes. Target: >= 98 %.

A dtype whose run stops with a ``NonFiniteError`` (float16 overflows in Gemma's residual stream)
is reported with the error's message instead of numbers.

Run:  python benchmarks/bench_precision.py [--models organism,gemma3-270m-chat] [--dtypes bfloat16,float16]
      [--n-fit 32] [--n-eval 32]        -> prints the table, writes benchmarks/precision.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import persona_gate as pg
from persona_gate.errors import NonFiniteError
from persona_gate.scoring.metrics import first_token_logprobs, refused
from persona_gate.scoring.refusal import RefusalScorer, eval_groups

OUT = Path(__file__).resolve().parent / "precision.json"
COS_TARGET, SAME_TARGET = 0.999, 0.98


def _cosines(a: torch.Tensor, b: torch.Tensor) -> list[float | None]:
    """Per-layer cosine of two direction sets' unit vectors (None where float32's is zero)."""
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    return [None if float(a[i].norm()) == 0 else round(float(c), 6) for i, c in enumerate(cos)]


def _decisions(model, prompts, ids) -> torch.Tensor:
    return refused(first_token_logprobs(model, prompts, batch_size=16), ids)


def _measure(name: str, dtype: str, ref: dict, args) -> dict:
    t0 = time.perf_counter()
    model = pg.load_chat_model(name, dtype=dtype, device="cpu")
    try:
        pr = pg.fit_persona_and_refusal(model, n_per_group=args.n_fit, progress=False, seed=0)
        same = _decisions(model, ref["prompts"], ref["ids"]) == ref["decisions"]
    except NonFiniteError as e:
        return {"error": str(e), "seconds": round(time.perf_counter() - t0, 1)}
    persona = _cosines(ref["pr"].persona.vectors, pr.persona.vectors)
    refusal = _cosines(ref["pr"].refusal.vectors, pr.refusal.vectors)
    mins = [min(c for c in cs if c is not None) for cs in (persona, refusal)]
    return {
        "persona_cos": persona,
        "refusal_cos": refusal,
        "min_persona_cos": mins[0],
        "min_refusal_cos": mins[1],
        "same_decisions": round(float(same.float().mean()), 4),
        "n_eval": len(ref["prompts"]),
        "refusal_rate": round(float(ref["decisions"].float().mean()), 4),
        "cos_target_met": min(mins) >= COS_TARGET,
        "same_target_met": float(same.float().mean()) >= SAME_TARGET,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _reference(name: str, args) -> dict:
    model = pg.load_chat_model(name, dtype="float32", device="cpu")
    pr = pg.fit_persona_and_refusal(model, n_per_group=args.n_fit, progress=False, seed=0)
    ids = RefusalScorer.for_model(model).token_ids
    prompts = [p for group in eval_groups(model, args.n_eval).values() for p in group]
    return {"pr": pr, "ids": ids, "prompts": prompts, "decisions": _decisions(model, prompts, ids)}


def _print(results: dict) -> None:
    print(f"{'model':<20}{'dtype':<10}{'min cos persona':>16}{'min cos refusal':>16}{'same decisions':>16}")
    for name, by_dtype in results.items():
        for dtype, r in by_dtype.items():
            if "error" in r:
                print(f"{name:<20}{dtype:<10}  stopped: {r['error']}")
                continue
            same = f"{100 * r['same_decisions']:.1f}% of {r['n_eval']}"
            print(f"{name:<20}{dtype:<10}{r['min_persona_cos']:>16.6f}{r['min_refusal_cos']:>16.6f}{same:>16}")
            for kind in ("persona", "refusal"):
                layers = " ".join("-" if c is None else f"{c:.4f}" for c in r[f"{kind}_cos"])
                print(f"{'':<30}{kind} cos by layer: {layers}")


NAMES = {"organism": "organism", "gemma3-270m-chat": "Gemma 3 270M chat"}


def _lowest(cos: list[float | None]) -> tuple[int, float]:
    return min(((i, c) for i, c in enumerate(cos) if c is not None), key=lambda ic: ic[1])


def markdown(res: dict) -> list[str]:
    """The Precision section of BENCHMARKS.md, rendered from ``precision.json`` (what :func:`main` wrote)."""
    cfg, tgt = res["config"], res["targets"]
    lines = [
        "## Precision",
        "",
        f"Measured on {cfg['device'].upper()} by `python benchmarks/bench_precision.py` (raw numbers: "
        "`benchmarks/precision.json`): each model loaded in float32 and in a low-precision dtype, persona and refusal "
        f"directions fitted on the same {cfg['n_fit_per_group']} prompts per group (same seed), and the first-token "
        "refusal decision (greedy first token among the float32 scorer's refusal tokens) on "
        f"{4 * cfg['n_eval_per_group']} evaluation prompts (`eval_groups`, {cfg['n_eval_per_group']} per group). "
        "Cosines are per layer between the float32 and the low-precision unit direction; layer 0's refusal direction "
        "is zero in both (nothing to compare) and is left out.",
        "",
        f"| model | dtype | min cosine, persona (target >= {tgt['cos']:g}) | min cosine, refusal (target >= {tgt['cos']:g}) "
        f"| same refusal decisions (target >= {tgt['same'] * 100:g} %) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for model, by_dtype in ((m, v) for m, v in res.items() if m in NAMES):
        for dtype, r in by_dtype.items():
            name = NAMES[model]
            if "error" in r:
                lines.append(f"| {name} | {dtype} | - | - | - | **stopped**: `NonFiniteError` |")
                notes.append(f'{name} in {dtype}: the run stops with "{r["error"]}"')
                continue
            cells, missed = [], []
            for what in ("persona", "refusal"):
                layer, low = _lowest(r[f"{what}_cos"])
                cell = f"{low:.6f}" + (f" (layer {layer})" if len(set(r[f"{what}_cos"])) > 2 else "")
                if low < tgt["cos"]:
                    cell, missed = f"**{cell}**", [*missed, f"{what} cosine at layer {layer}"]
                cells.append(cell)
            same = f"{r['same_decisions'] * 100:.1f} % of {r['n_eval']}"
            if r["same_decisions"] < tgt["same"]:
                same, missed = f"**{same}**", [*missed, "refusal decisions"]
            verdict = "met" if not missed else f"**not met** ({', '.join(missed)})"
            lines.append(f"| {name} | {dtype} | {cells[0]} | {cells[1]} | {same} | {verdict} |")
            for what in ("persona", "refusal"):
                below = [(i, c) for i, c in enumerate(r[f"{what}_cos"]) if c is not None and c < tgt["cos"]]
                if below:
                    rest = min(c for i, c in enumerate(r[f"{what}_cos"]) if c is not None and c >= tgt["cos"])
                    where = ", ".join(f"layer {i} ({c:.4f})" for i, c in below)
                    notes.append(
                        f"{name} in {dtype}: the {what} cosine misses the {tgt['cos']:g} target at {where}; every other "
                        f"layer is >= {rest:.4f}, and {r['same_decisions'] * 100:.0f} % of the refusal decisions agree. "
                        "An early-layer direction is a small difference of means on top of a large residual, which a "
                        "low-precision mantissa rounds most."
                    )
    return lines + [""] + [x for n in notes for x in (n, "")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="organism,gemma3-270m-chat")
    ap.add_argument("--dtypes", default="bfloat16,float16")
    ap.add_argument("--n-fit", type=int, default=32, help="prompts per group for fitting directions")
    ap.add_argument("--n-eval", type=int, default=32, help="evaluation prompts per group (4 groups)")
    args = ap.parse_args()
    torch.manual_seed(0)
    results: dict[str, dict] = {}
    for name in args.models.split(","):
        ref = _reference(name, args)
        results[name] = {d: _measure(name, d, ref, args) for d in args.dtypes.split(",")}
    _print(results)
    meta = {"n_fit_per_group": args.n_fit, "n_eval_per_group": args.n_eval, "device": "cpu"}
    OUT.write_text(
        json.dumps({"config": meta, "targets": {"cos": COS_TARGET, "same": SAME_TARGET}, **results}, indent=2)
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
