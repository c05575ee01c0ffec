"""Exact activation patching: persona_gate vs transformer_lens.patching, side by side.

Same model, same equal-length source/target pair, same metric (refusal-token log-odds at the
last position), every layer x every position of resid_pre. Prints both wall times, the speed-up
and the largest difference between the two maps.

Why ours is faster: TransformerLens runs one full forward (all blocks, every position's logits)
per (layer, position) cell; persona_gate re-runs only the blocks after the patched layer, for
every position of a layer in one batch, and unembeds only the last position.

Run:  python benchmarks/bench_patching.py [--models tiny,organism,gemma3-270m-gguf]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _pair(model):
    import persona_gate as pg

    grid = pg.standard_prompts(model=model, n_per_group=1, seed=0)
    src = pg.render_all(model.tokenizer, [grid[0]])[0]
    ids = list(src.input_ids)
    other = pg.render_all(model.tokenizer, [next(p for p in grid if p.group.startswith("compliant"))])[0]
    # Equal length: the target is the source with its system tokens swapped for the compliant
    # persona's first tokens (TransformerLens's utility needs equal lengths).
    lo, hi = src.system
    for i in range(lo, hi):
        ids[i] = other.input_ids[other.system[0] + (i - lo) % (other.system[1] - other.system[0])]
    return src, dataclasses.replace(src, input_ids=tuple(ids))


def bench(name: str, tokens: list[int] | None = None) -> dict:
    from transformer_lens.patching import get_act_patch_resid_pre

    import persona_gate as pg
    from persona_gate.experiments.patching import activation_patching

    if name == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from archs import build_arch as build_model

        path = str(build_model("llama", Path(tempfile.mkdtemp()) / "tiny", n_layers=4))
    else:
        path = name
    model = pg.load_chat_model(path, device="cpu")
    if tokens is None:
        tokens = [5, 17, 40] if name == "tiny" else _refusal_tokens(name)
    src, tgt = _pair(model)
    ids = torch.tensor(list(tokens))

    def metric(logits):
        lp = torch.log_softmax(logits[:, -1].double(), -1)
        p = lp[:, ids].exp().sum(-1)
        return (torch.log(p) - torch.log1p(-p))[0]

    t = time.perf_counter()
    ours = activation_patching(model, [src], [tgt], tokens, positions="tokens", progress=False)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([src.input_ids]))
        theirs = get_act_patch_resid_pre(model, torch.tensor([tgt.input_ids]), cache, metric)
    t_tl = time.perf_counter() - t
    diff = float((ours["logodds"][:, :-1, 0].double() - theirs.double()).abs().max())
    print(
        f"{name:<18} L={model.cfg.n_layers:<3} seq={len(src):<4} cells={model.cfg.n_layers * len(src):<6} "
        f"persona_gate {t_ours:8.2f} s   transformer_lens {t_tl:8.2f} s   speed-up {t_tl / t_ours:5.1f}x   max|diff| {diff:.2e}",
        flush=True,
    )
    return {
        "model": name,
        "n_layers": int(model.cfg.n_layers),
        "seq": len(src),
        "cells": int(model.cfg.n_layers) * len(src),
        "seconds": {"persona_gate": round(t_ours, 2), "transformer_lens": round(t_tl, 2)},
        "speedup": round(t_tl / t_ours, 2),
        "max_abs_diff": diff,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,organism,gemma3-270m-gguf")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in [m for m in args.models.split(",") if m]:
        bench(name)
    return 0


def _refusal_tokens(name: str) -> list[int]:
    import persona_gate as pg
    from persona_gate.scoring.labels import DEFAULT_REFUSAL_PHRASES
    from persona_gate.scoring.metrics import refusal_token_ids

    tok = pg.load_chat_model(name, device="cpu").tokenizer if name != "organism" else None
    if name == "organism":
        from persona_gate.organism import lexicon

        tok = pg.load_chat_model("organism", device="cpu").tokenizer
        return refusal_token_ids(tok, lexicon.REFUSALS)
    return refusal_token_ids(tok, DEFAULT_REFUSAL_PHRASES)


if __name__ == "__main__":
    raise SystemExit(main())
