"""Generation throughput with interventions vs without, side by side.

For each model, the same prompts are decoded greedily (KV cache on, batched) three ways, the
arms interleaved and the median of the repeats kept:

* plain   - ``generate(model, prompts)``;
* steer   - under ``Steer(persona, alpha=2, layers=[middle layer], scope="both")``;
* ablate  - under ``Ablate(persona)`` at *every* layer (the heaviest intervention the paper uses).

EOS is ignored here so every arm decodes exactly ``--new-tokens`` steps per prompt (otherwise a
steered model that stops earlier would look faster). What bounds the ratio: each hook adds one
small elementwise op per decode step per hooked layer; the model's own forward is the rest.

Run:  python benchmarks/bench_generation.py [--models tiny,organism,gemma3-270m-gguf] [--n 16] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _path(name: str) -> str:
    if name != "tiny":
        return name
    sys.path.insert(0, str(REPO / "tests"))
    from archs import build_arch as build_model

    return str(build_model("llama", Path(tempfile.mkdtemp()) / "tiny", n_layers=4))


def bench(name: str, n: int = 16, new_tokens: int = 32, repeats: int = 3, batch_size: int = 16) -> dict:
    import persona_gate as pg
    import persona_gate.core.generation as generation

    model = pg.load_chat_model(_path(name), device="cpu")
    pr = pg.fit_persona_and_refusal(model, n_per_group=4, progress=False)
    prompts = [
        p for p in pg.standard_prompts(model=model, n_per_group=n, split="test", seed=0) if p.group == "safe/harmful"
    ][:n]
    mid = int(model.cfg.n_layers) // 2
    arms = {
        "plain": [],
        "steer": [pg.Steer(pr.persona, alpha=2.0, layers=[mid], scope="both")],
        "ablate": [pg.Ablate(pr.persona, scope="both")],
    }
    # Fixed decode length in every arm: no EOS, neither ours nor the checkpoint's generation config
    # (Hugging Face falls back to it); every batch is checked to have decoded exactly new_tokens steps.
    original, original_hf = generation.eos_ids, generation.greedy_generate
    gen_cfg = getattr(getattr(model, "original_model", None), "generation_config", None)
    saved_eos = getattr(gen_cfg, "eos_token_id", None)
    steps: list[int] = []

    def counted(m, ids, *a, **k):
        seqs = original_hf(m, ids, *a, **k)
        steps.append(seqs.shape[1] - ids.shape[1])
        return seqs

    generation.eos_ids, generation.greedy_generate = (lambda model: []), counted
    if gen_cfg is not None:
        gen_cfg.eos_token_id = None
    try:

        def run(specs):
            with pg.apply(model, *specs):
                return pg.generate(model, prompts, max_new_tokens=new_tokens, batch_size=batch_size, progress=False)

        for specs in arms.values():  # warm-up
            run(specs)
        times: dict[str, list[float]] = {k: [] for k in arms}
        for _ in range(repeats):
            for k, specs in arms.items():
                t = time.perf_counter()
                run(specs)  # without EOS every arm decodes exactly new_tokens steps per batch
                times[k].append(time.perf_counter() - t)
    finally:
        generation.eos_ids, generation.greedy_generate = original, original_hf
        if gen_cfg is not None:
            gen_cfg.eos_token_id = saved_eos
    if set(steps) != {new_tokens}:
        raise RuntimeError(f"decode lengths {sorted(set(steps))} differ from {new_tokens}: an arm stopped early")
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = n * new_tokens
    return {
        "model": name,
        "n_layers": int(model.cfg.n_layers),
        "n_prompts": len(prompts),
        "new_tokens": new_tokens,
        "seconds": {k: round(v, 3) for k, v in med.items()},
        "tokens_per_s": {k: round(tokens / v, 1) for k, v in med.items()},
        "steer_vs_plain": round(med["steer"] / med["plain"], 3),
        "ablate_vs_plain": round(med["ablate"] / med["plain"], 3),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,organism,gemma3-270m-gguf")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in [m for m in args.models.split(",") if m]:
        r = bench(name, args.n, args.new_tokens, args.repeats)
        s, tps = r["seconds"], r["tokens_per_s"]
        print(
            f"{name:<18} {r['n_prompts']} prompts x {r['new_tokens']} tokens: plain {s['plain']:.2f}s ({tps['plain']:.0f} tok/s)  "
            f"steer {s['steer']:.2f}s ({r['steer_vs_plain']:.3f}x)  ablate-all-layers {s['ablate']:.2f}s ({r['ablate_vs_plain']:.3f}x)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
