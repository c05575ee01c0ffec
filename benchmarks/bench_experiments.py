"""Wall time of each experiment on the organism and on Gemma 3 270M (2 CPU cores).

Every experiment is a loop of batched forwards under interventions, so its time is
(number of cells) x (one forward of n prompts); the table prints both, so a reader can see which
part is the model's own forward time.

Run:  python benchmarks/bench_experiments.py [--models organism,gemma3-270m-gguf] [--n 16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def run(name: str, n: int) -> list[dict]:
    import persona_gate as pg
    from persona_gate import experiments as ex
    from persona_gate.scoring.labels import DEFAULT_REFUSAL_PHRASES

    model = pg.load_chat_model(name, device="cpu")
    L = model.cfg.n_layers
    # Every third layer on deep models keeps the benchmark short; the organism runs them all.
    layers = list(range(1, L)) if L <= 8 else list(range(1, L, 3))
    rows = []

    def timed(label: str, cells: int, fn):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        rows.append(
            {
                "model": name,
                "experiment": label,
                "cells": cells,
                "seconds": round(dt, 2),
                "per_cell_s": round(dt / max(cells, 1), 4),
            }
        )
        print(
            f"{name:<18} {label:<28} {cells:>5} cells  {dt:8.2f} s  ({dt / max(cells, 1) * 1000:7.1f} ms per cell)",
            flush=True,
        )
        return out

    pr = timed("fit directions", 1, lambda: pg.fit_persona_and_refusal(model, n_per_group=4 * n, progress=False))
    phrases = None if pg.model_info(model).source == "organism" else DEFAULT_REFUSAL_PHRASES
    scorer = ex.RefusalScorer.for_model(model, phrases=phrases)
    groups = ex.eval_groups(model, n)
    one = timed("one scoring forward", 1, lambda: scorer.score(groups["safe/harmful"]))
    del one
    alphas = (0.0, 1.0, 2.0, 4.0)
    timed(
        "steering sweep",
        2 * len(layers) * len(alphas),
        lambda: ex.steering_sweep(
            model, pr.persona, layers=layers, alphas=alphas, scorer=scorer, groups=groups, progress=False
        ),
    )
    timed(
        "re-introduction",
        len(layers),
        lambda: ex.reintroduction(
            model, pr.persona, pr.refusal, layers=layers, scorer=scorer, groups=groups, progress=False
        ),
    )
    width = max(2, L // 3)
    timed(
        f"window projection (w={width})",
        6 * (L - width + 1),
        lambda: ex.window_projection(
            model, pr.persona, width=width, random_seeds=5, scorer=scorer, groups=groups, progress=False
        ),
    )
    mid = [L // 2]
    timed(
        "extraction sites (1 layer)",
        5,
        lambda: ex.extraction_sites(model, layers=mid, alphas=(2.0, 4.0), n=n, scorer=scorer, progress=False),
    )
    timed(
        "selection",
        len(layers) * 3,
        lambda: ex.select_steering(
            model, pr.persona, layers=layers, alphas=(1.0, 2.0, 4.0), n=n, scorer=scorer, progress=False
        ),
    )
    timed("traits (8)", 8, lambda: ex.trait_directions(model, pr, n_questions=8, progress=False))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="organism,gemma3-270m-gguf")
    ap.add_argument("--n", type=int, default=16, help="prompts per group")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    rows = [r for name in args.models.split(",") if name for r in run(name, args.n)]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
