"""Prefix reuse against one full forward per cell, side by side in one run, with the max |difference|.

Each experiment runs twice on the same prompts, directions and refusal tokens: the old route
(``RefusalScorer(reuse_prefix=False)``: every cell a full forward) and the new one (the clean
prompts recorded once, each cell re-run from its first changed layer, cells of one layer tiled
into one batch). Printed: both wall times, their ratio and the largest |difference| in refusal
log-odds over every cell and prompt (the routes must agree to 1e-5).

Run:  python benchmarks/bench_reuse.py [--models organism,gemma3-270m-gguf] [--n 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch


def run(name: str, n: int, repeats: int) -> list[dict]:
    import persona_gate as pg
    from persona_gate import experiments as ex
    from persona_gate.scoring.labels import DEFAULT_REFUSAL_PHRASES

    model = pg.load_chat_model(name, device="cpu")
    L = model.cfg.n_layers
    # The experiment grids of benchmarks/bench_experiments.py: every third layer on deep models.
    layers = list(range(1, L)) if L <= 8 else list(range(1, L, 3))
    width = max(2, L // 3)
    pr = pg.fit_persona_and_refusal(model, n_per_group=4 * n, progress=False)
    phrases = None if pg.model_info(model).source == "organism" else DEFAULT_REFUSAL_PHRASES
    new = ex.RefusalScorer.for_model(model, phrases=phrases)
    old = dataclasses.replace(new, reuse_prefix=False)
    groups = ex.eval_groups(model, n)
    experiments = {
        "steering sweep": (
            2 * len(layers) * 4,
            lambda s: ex.steering_sweep(
                model, pr.persona, layers=layers, alphas=(0.0, 1.0, 2.0, 4.0), scorer=s, groups=groups, progress=False
            ),
        ),
        "re-introduction": (
            len(layers),
            lambda s: ex.reintroduction(
                model, pr.persona, pr.refusal, layers=layers, scorer=s, groups=groups, progress=False
            ),
        ),
        f"window grid (w={width})": (
            6 * (L - width + 1),
            lambda s: ex.window_projection(
                model, pr.persona, width=width, random_seeds=5, scorer=s, groups=groups, progress=False
            ),
        ),
        # The full start x end grid (RunConfig's default) nests windows of one start in each other;
        # every sixth start keeps the old route's time bearable.
        "window grid (nested)": (
            2 * sum(L - a for a in range(0, L, max(1, L // 3))),
            lambda s: ex.window_projection(
                model,
                pr.persona,
                windows=[(a, b) for a in range(0, L, max(1, L // 3)) for b in range(a, L)],
                random_seeds=1,
                scorer=s,
                groups=groups,
                progress=False,
            ),
        ),
    }
    rows = []
    for label, (cells, fn) in experiments.items():
        times = {"old": [], "new": []}
        results = {}
        for _ in range(repeats):  # alternate the routes so drift in the machine hits both alike
            for route, scorer in (("old", old), ("new", new)):
                t = time.perf_counter()
                results[route] = fn(scorer)
                times[route].append(time.perf_counter() - t)
        a, b = results["old"]["logodds"], results["new"]["logodds"]
        ok = torch.isfinite(a) & torch.isfinite(b)
        diff = float((a[ok] - b[ok]).abs().max()) if ok.any() else 0.0
        same_refused = bool(torch.equal(results["old"]["refused"][ok].bool(), results["new"]["refused"][ok].bool()))
        t_old, t_new = min(times["old"]), min(times["new"])
        row = {
            "model": name,
            "experiment": label,
            "cells": cells,
            "old_s": round(t_old, 3),
            "new_s": round(t_new, 3),
            "speedup": round(t_old / t_new, 2),
            "max_abs_diff_logodds": diff,
            "same_refused": same_refused,
        }
        rows.append(row)
        print(
            f"{name:<18} {label:<22} {cells:>4} cells  old {t_old:7.2f} s  new {t_new:7.2f} s  "
            f"{t_old / t_new:5.2f}x  max|d logodds| {diff:.1e}  refused equal: {same_refused}",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="organism,gemma3-270m-gguf")
    ap.add_argument("--n", type=int, default=16, help="prompts per group")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each route (the best is kept)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    rows = [r for name in args.models.split(",") if name for r in run(name, args.n, args.repeats)]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
