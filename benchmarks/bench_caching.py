"""Caching benchmark: persona_gate's residual caching vs bare Hugging Face forwards, side by side.

For each model, on the same rendered prompts, the same length-sorted batches and the same left
padding, it times (median of interleaved repeats):

* ours      - ``iter_activations`` of every layer's resid_pre at the last token and the
              system-span mean (what fitting directions does);
* hf_full   - a bare Hugging Face forward (``model(ids, attention_mask)``, logits included);
* hf_body   - the body only (``model.model(...)``, no unembedding): the physical limit for this
              job, since caching needs no logits;
* bridge_full - the TransformerLens bridge's own full forward: bridge_full / hf_full is the
              per-module wrapper overhead that every hook-based tool on the bridge pays.

and, in fresh subprocesses, the peak RSS of streaming fits over N and 8N prompts.

Run:  python benchmarks/bench_caching.py [--models tiny,organism,gemma3-270m-gguf] [--n 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _batches(rendered, batch_size, pad_id):
    order = sorted(range(len(rendered)), key=lambda i: -len(rendered[i]))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        L = max(len(rendered[i]) for i in idx)
        ids = torch.full((len(idx), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), L), dtype=torch.long)
        for b, i in enumerate(idx):
            n = len(rendered[i])
            ids[b, L - n :] = torch.tensor(rendered[i].input_ids)
            mask[b, L - n :] = 1
        out.append((ids, mask))
    return out


def _load_hf(name: str):
    """A separate, bare Hugging Face model (no bridge wrappers) with eager attention, like the bridge."""
    from transformers import AutoModelForCausalLM

    from persona_gate.models.loading import _load_gguf, _resolve_source

    source, where = _resolve_source(name)
    if source == "gguf":
        hf, _ = _load_gguf(Path(where), torch.float32)
    else:
        hf = AutoModelForCausalLM.from_pretrained(where, attn_implementation="eager", dtype=torch.float32)
    return hf.eval()


def _tiny_model_dir() -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from archs import build_arch as build_model  # the tests' seeded tiny Llama builder

    return str(build_model("llama", Path(tempfile.mkdtemp()) / "tiny", n_layers=4))


def time_model(name: str, n: int, batch_size: int, repeats: int) -> dict:
    import persona_gate as pg
    from persona_gate.core.activations import iter_activations

    path = _tiny_model_dir() if name == "tiny" else name
    model = pg.load_chat_model(path, device="cpu")
    hf = _load_hf(path)
    prompts = pg.standard_prompts(model=model, n_per_group=max(1, n // 4), seed=0)[:n]
    rendered = pg.render_all(model.tokenizer, prompts)
    sites = pg.sites_for(model)
    batches = _batches(rendered, batch_size, model.tokenizer.pad_token_id)

    def ours():
        for _ in iter_activations(
            model, rendered, sites, ["last", "mean:system"], batch_size=batch_size, progress=False
        ):
            pass

    def hf_full():
        with torch.no_grad():
            for ids, mask in batches:
                hf(input_ids=ids, attention_mask=mask)

    def hf_body():
        with torch.no_grad():
            for ids, mask in batches:
                hf.model(input_ids=ids, attention_mask=mask)

    def bridge_full():  # the TransformerLens bridge's own forward (all layers, logits): its wrapper overhead
        with torch.no_grad():
            for ids, mask in batches:
                model(ids, attention_mask=mask)

    fns = {"ours": ours, "hf_full": hf_full, "hf_body": hf_body, "bridge_full": bridge_full}
    for f in fns.values():  # warm-up
        f()
    # Toy models take milliseconds: each measurement loops a function until it has run >= 0.3 s,
    # so timer resolution and scheduler noise do not decide the ratio.
    t = time.perf_counter()
    fns["hf_body"]()
    loops = max(1, int(0.3 / max(time.perf_counter() - t, 1e-6)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():  # interleaved, so drift hits all four alike
            t = time.perf_counter()
            for _ in range(loops):
                f()
            times[k].append((time.perf_counter() - t) / loops)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name,
        "n_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
        "vocab": model.cfg.d_vocab,
        "n_prompts": len(rendered),
        "mean_tokens": round(sum(len(r) for r in rendered) / len(rendered), 1),
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "ours_vs_hf_body": round(med["ours"] / med["hf_body"], 3),
        "ours_vs_hf_full": round(med["ours"] / med["hf_full"], 3),
        "hf_body_vs_hf_full": round(med["hf_body"] / med["hf_full"], 3),
        "bridge_full_vs_hf_full": round(med["bridge_full"] / med["hf_full"], 3),
    }


_CHILD = """
import sys, threading, time, torch, persona_gate as pg
torch.set_num_threads(2)
name, n, bs, base_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
m = pg.load_chat_model(name, device="cpu")
# N and 8N use the same prompts (8N repeats them), so the longest batch -- which sets the peak of
# the attention scores -- is the same and only the number of prompts differs.
p = pg.standard_prompts(model=m, n_per_group=max(1, base_n // 4), seed=0)[:base_n]
p = (p * (1 + n // len(p)))[:n]
before = rss()
p = pg.render_all(m.tokenizer, p)  # the input itself is O(N); measured apart from the fit
prompts_kib = rss() - before
# One batch first: weights read lazily from a memory-mapped file (the de-quantised GGUF cache) are
# paged in by the first forward; that is the model's size, not the fit's.
pg.fit_group_means(m, p[:bs], pg.sites_for(m), ["last", "mean:system"], batch_size=bs, progress=False)
base, peak, done = rss(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.005)
t = threading.Thread(target=sample); t.start()
pg.fit_group_means(m, p, pg.sites_for(m), ["last", "mean:system"], batch_size=bs, progress=False)
done.set(); t.join()
print(prompts_kib, max(peak[0], rss()) - base)
"""


def _peak_child(name: str, n: int, batch_size: int, base_n: int) -> tuple[int, int]:
    """(RSS of the n rendered prompts, RSS growth above model + prompts while the streaming fit runs), KiB."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name, str(n), str(batch_size), str(base_n)],
        capture_output=True,
        text=True,
        check=True,
    )
    prompts, growth = out.stdout.strip().splitlines()[-1].split()
    return int(prompts), int(growth)


def memory(name: str, n: int, batch_size: int, factor: int = 8) -> dict:
    path = _tiny_model_dir() if name == "tiny" else name
    (p_small, small), (p_large, large) = (
        _peak_child(path, n, batch_size, n),
        _peak_child(path, factor * n, batch_size, n),
    )
    return {
        "model": name,
        "n": n,
        "factor": factor,
        "peak_rss_growth_kib": {"N": small, f"{factor}N": large},
        "prompts_rss_kib": {"N": p_small, f"{factor}N": p_large},
        "ratio": round(large / max(small, 1), 3),
        "growth_mib": round((large - small) / 1024, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,organism,gemma3-270m-gguf")
    ap.add_argument("--n", type=int, default=64, help="prompts per timing run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-n", type=int, default=16, help="N for the N vs 8N streaming-memory check")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    results = {"timing": [], "memory": []}
    for name in [m for m in args.models.split(",") if m]:
        r = time_model(name, args.n, args.batch_size, args.repeats)
        results["timing"].append(r)
        s = r["seconds"]
        print(
            f"{name:<18} L={r['n_layers']:<3} d={r['d_model']:<5} V={r['vocab']:<7} n={r['n_prompts']} "
            f"ours {s['ours']:.3f}s  hf_full {s['hf_full']:.3f}s  hf_body {s['hf_body']:.3f}s  "
            f"ours/hf_body {r['ours_vs_hf_body']:.3f}x  ours/hf_full {r['ours_vs_hf_full']:.3f}x",
            flush=True,
        )
        m = memory(name, args.memory_n, args.batch_size)
        results["memory"].append(m)
        print(
            f"{'':<18} streaming fit peak RSS growth: N={args.memory_n}: {m['peak_rss_growth_kib']['N'] / 1024:.1f} MiB, "
            f"8N: {m['peak_rss_growth_kib']['8N'] / 1024:.1f} MiB  (8N/N {m['ratio']:.3f}x)",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
