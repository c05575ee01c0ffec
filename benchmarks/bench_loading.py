"""Loading time: ``pg.load_chat_model(name)`` in a fresh process, with a breakdown, before vs after.

Each run is a new Python process (``--probe``) that imports persona_gate and loads the model
once, with every cache warm (the de-quantised GGUF, the merged adapter: each arm's first load
fills them). Wall time runs from launching the process to the loaded model
(interpreter start-up included, the process's exit not). The breakdown times what the load
calls, each stage exclusive of the stages nested in it:

* start-up  - the interpreter, until the probe's first line;
* imports   - ``import persona_gate``, torch, transformers and ``transformer_lens.model_bridge``
              (in that order; each one's share is kept too);
* tokenizer - ``AutoTokenizer.from_pretrained`` (every call: persona_gate's and the bridge's);
* weights   - ``AutoModelForCausalLM.from_pretrained`` (and the modules it imports on first use);
* merge     - folding the adapter in (``merge_lora``), or reading the cached merge (``read_merged``);
* bridge    - ``TransformerBridge.boot_transformers`` less the stages above nested in it;
* compat    - ``enable_compatibility_mode``;
* other     - the rest of ``load_chat_model`` (resolving the name, checksums, the profile).

Three arms run interleaved, ``--runs`` times each, and the median of each figure is kept:
``before`` is the package at ``--before`` (a git commit; default the one before the loading
work), extracted with ``git archive``; ``after`` is this checkout; ``transformers`` is the floor:
plain transformers (no persona_gate, no TransformerLens) reading the same float32 weights and
tokenizer (the organism's folder, or the base's de-quantised cache for a chat adapter). Each
stage is kept in wall seconds and in the process's CPU seconds, which other processes on a
shared machine inflate far less. The probes use a cache folder of their own that shares only the
de-quantised GGUF, so each arm's first load (timed apart) starts with no merge kept.

Run:  python benchmarks/bench_loading.py [--models organism,gemma3-270m-chat] [--runs 5] [--before REF]
      -> prints the table, writes benchmarks/loading.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "loading.json"
BEFORE = "4398169"  # main before issue 31's loading work
STAGES = ("startup", "imports", "tokenizer", "weights", "merge", "bridge", "compat", "other")
IMPORTS = ("import_torch", "import_transformers", "import_tl")  # the parts of "imports"
TARGETS = {"organism": 2.5, "gemma3-270m-chat": 4.0}


def _probe(name: str, plain: str | None = None) -> None:
    """One load in this process; prints the breakdown as JSON (see the module docstring): each stage
    in wall seconds and in this process's CPU seconds. ``plain``: instead, plain transformers reads
    the model and tokenizer in that folder (no persona_gate, no TransformerLens)."""
    clocks = (time.perf_counter, time.process_time)
    now = lambda: [c() for c in clocks]  # noqa: E731
    t_start = now()
    if not plain:
        import persona_gate as pg
    t_pg = now()
    import torch

    t_torch = now()
    import transformers

    t_transformers = now()
    if not plain:
        import transformer_lens.model_bridge as tlb
    t_imports = now()
    spent = {s: [0.0, 0.0] for s in STAGES}
    for key, (a, b) in zip(IMPORTS, ((t_pg, t_torch), (t_torch, t_transformers), (t_transformers, t_imports))):
        spent[key] = [y - x for x, y in zip(a, b)]
    stack: list[list] = []

    def timed(stage, fn):
        def wrapper(*a, **k):
            stack.append([0.0, 0.0])
            t = now()
            try:
                return fn(*a, **k)
            finally:
                dt = [y - x for x, y in zip(t, now())]
                nested = stack.pop()
                spent[stage] = [s + d - n for s, d, n in zip(spent[stage], dt, nested)]
                if stack:
                    stack[-1] = [s + d for s, d in zip(stack[-1], dt)]

        return wrapper

    def patch(owner, attr, stage, static=False):
        fn = getattr(owner, attr, None)
        if fn is not None:
            w = timed(stage, fn)
            setattr(owner, attr, staticmethod(w) if static else w)

    patch(transformers.AutoTokenizer, "from_pretrained", "tokenizer", static=True)
    patch(transformers.AutoModelForCausalLM, "from_pretrained", "weights", static=True)
    t = now()
    if plain:
        transformers.AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32, attn_implementation="eager")
        transformers.AutoTokenizer.from_pretrained(plain)
    else:
        import persona_gate.models.adapter as adapter
        import persona_gate.models.loading as loading

        patch(adapter, "merge_lora", "merge")
        patch(loading, "read_merged", "merge")
        patch(tlb.TransformerBridge, "boot_transformers", "bridge", static=True)
        patch(tlb.TransformerBridge, "enable_compatibility_mode", "compat")
        pg.load_chat_model(name, device="cpu", **({"progress": False} if "progress" in _params(pg) else {}))
    done = now()
    spent["imports"] = [y - x for x, y in zip(t_start, t_imports)]
    timed_stages = ("tokenizer", "weights", "merge", "bridge", "compat")
    spent["other"] = [d - x - sum(spent[s][i] for s in timed_stages) for i, (x, d) in enumerate(zip(t, done))]
    # The parent's clock (time.time) when the model was ready: wall = that - launch; start-up = wall - what ran here.
    row = {"done": time.time(), "in_process": done[0] - t_start[0], "cpu_total": done[1]}
    row.update({k: v[0] for k, v in spent.items()})
    row.update({f"cpu_{k}": v[1] for k, v in spent.items() if k != "startup"})
    print(json.dumps(row), flush=True)
    os._exit(0)  # the process's exit (freeing the model) is not part of loading it


def _params(pg) -> set[str]:
    import inspect

    return set(inspect.signature(pg.load_chat_model).parameters)


def _plain_folder(name: str) -> Path:
    """The float32 folder plain transformers reads for ``name``: the organism's own, or the
    de-quantised cache of the packaged GGUF a packaged chat model's adapter sits on (its base)."""
    import torch

    from persona_gate.models import loading

    if name == loading.ORGANISM:
        return loading.organism_dir()
    base = loading.PACKAGED_CHAT[name][0] if name in loading.PACKAGED_CHAT else name
    return loading.gguf_cache_folder(loading.packaged_gguf_path(base), torch.float32)


def _run(name: str, root: Path | None, cache: Path) -> dict:
    """One probe in a fresh process: persona_gate from ``root``, or (None) plain transformers."""
    env = {
        **os.environ,
        "PYTHONPATH": str(root or ""),
        "PERSONA_GATE_CACHE": str(cache),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    t = time.time()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--probe", name]
        + ([] if root is not None else ["--plain", str(_plain_folder(name))]),
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    if proc.returncode:
        raise RuntimeError(f"the probe of {name} under {root} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    wall = row.pop("done") - t  # from the launch to the loaded model
    row["startup"] = wall - row.pop("in_process")
    row["wall"] = wall
    return row


def _extract(ref: str) -> Path:
    """The package and its data at git commit ``ref``, in a temporary folder."""
    out = Path(tempfile.mkdtemp(prefix=f"persona_gate-{ref}-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "persona_gate", "data"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def _bench_cache() -> Path:
    """A cache folder of the benchmark's own, sharing only the user's de-quantised GGUF (de-quantising
    again would take a minute): the first load of each arm starts from no merge and no checksums."""
    from persona_gate.models.cache import cache_dir

    out = Path(tempfile.mkdtemp(prefix="persona_gate-bench-cache-"))
    if (cache_dir() / "gguf").is_dir():
        (out / "gguf").symlink_to(cache_dir() / "gguf")
    return out


def bench(name: str, runs: int, arms: dict[str, Path | None]) -> dict:
    cache = _bench_cache()
    try:
        # The first load of each arm fills what that arm keeps (the merge, the checksums): timed apart.
        first = {arm: _run(name, root, cache)["wall"] for arm, root in arms.items()}
        rows: dict[str, list[dict]] = {arm: [] for arm in arms}
        for _ in range(runs):
            for arm, root in arms.items():
                rows[arm].append(_run(name, root, cache))
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # the merge kept there (0.4 GB for Gemma); the link to the GGUF cache
    out = {"model": name, "runs": runs}
    for arm, rs in rows.items():
        keys = ("wall", *STAGES, *IMPORTS, "cpu_total", *(f"cpu_{k}" for k in (*STAGES[1:], *IMPORTS)))
        out[arm] = {k: round(statistics.median(r[k] for r in rs), 3) for k in keys}
        out[arm]["walls"] = [round(r["wall"], 2) for r in rs]
        out[arm]["first_wall"] = round(first[arm], 2)
    return out


def _table(res: dict, cpu: bool) -> list[str]:
    """One row per model and arm: wall seconds (``cpu``: this process's CPU seconds) per stage."""
    key = (lambda k: f"cpu_{k}") if cpu else (lambda k: k)
    head = (
        "| model | arm | " + ("CPU total" if cpu else "wall | first | start-up") + " | imports | tokenizer | weights "
    )
    lines = [head + "| merge | bridge | compat | other | target |", "|" + "---|" * (head.count("|") + 5)]
    for r in res["rows"]:
        target = TARGETS.get(r["model"])
        for arm in [a for a in ("before", "after", "transformers") if a in r]:
            s = r[arm]
            total = s["cpu_total"] if cpu else s["wall"]
            verdict = ""
            if arm == "after" and target is not None:
                verdict = f"<= {target} s: " + ("met" if total <= target else "**not met**")
            lead = f"{total:.2f} s" if cpu else f"{total:.2f} s | {s['first_wall']:.2f} s | {s['startup']:.2f}"
            imports = f"{s[key('imports')]:.2f} ({' / '.join(f'{s[key(k)]:.2f}' for k in IMPORTS)})"
            stages = " | ".join(f"{s[key(k)]:.2f}" for k in STAGES[2:])
            lines.append(f"| {r['model']} | {arm} | {lead} | {imports} | {stages} | {verdict} |")
    return lines


def markdown(res: dict) -> list[str]:
    """The Loading section of BENCHMARKS.md, from :data:`OUT`'s content."""
    env = res["environment"]
    lines = [
        "## Loading",
        "",
        f"Measured {env['date']} on {env['cpus']} CPU cores (1-minute load average "
        f"{' -> '.join(f'{x:.1f}' for x in env['load_average'])} at the start and end: other processes' share) "
        "by `python benchmarks/bench_loading.py` (raw numbers: `benchmarks/loading.json`): "
        "`pg.load_chat_model(name, device='cpu')` in a fresh process, from launching it to the loaded model, median "
        f"of {res['rows'][0]['runs']} runs per arm, the arms interleaved, every cache warm (the de-quantised GGUF; "
        "the merged adapter and the checksums were written by each arm's first load, timed apart as *first*). "
        f"`before`: the package at commit {res['before_ref']}; `after`: this one. Stages are exclusive (what each "
        "covers: the script's docstring); imports are split as torch / transformers / TransformerLens. Seconds of "
        "wall time:",
        "",
        *_table(res, cpu=False),
        "",
        "The same runs in the process's CPU seconds (start-up aside), which other processes on the machine inflate "
        "far less than wall time; on an idle machine the wall time approaches them:",
        "",
        *_table(res, cpu=True),
        "",
        *res.get("notes", []),
        "",
    ]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--plain", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--models", default="organism,gemma3-270m-chat")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before", default=BEFORE, help="git commit of the 'before' arm ('' for none)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.probe:
        _probe(args.probe, args.plain)
        return 0
    import datetime as dt

    arms = {"before": _extract(args.before)} if args.before else {}
    arms["after"] = REPO
    arms["transformers"] = None  # the floor: plain transformers reads the same float32 weights and tokenizer
    res: dict = {
        "environment": {
            "date": dt.date.today().isoformat(),
            "cpus": os.cpu_count(),
            "load_average": [os.getloadavg()[0]],
        },
        "before_ref": args.before or None,
        "rows": [],
    }
    try:
        for name in [m for m in args.models.split(",") if m]:
            res["rows"].append(bench(name, args.runs, arms))
    finally:
        if arms.get("before"):
            shutil.rmtree(arms["before"], ignore_errors=True)
    for r in res["rows"]:
        name = r["model"]
        for arm in arms:
            s = r[arm]
            print(
                f"{name:<18} {arm:<12} wall {s['wall']:.2f}s cpu {s['cpu_total']:.2f}s  "
                + "  ".join(f"{k} {s[k]:.2f}" for k in STAGES)
            )
    res["environment"]["load_average"].append(os.getloadavg()[0])  # other processes' share of the CPUs, start and end
    if Path(args.out).exists():  # keep the notes written by hand beside the numbers
        res["notes"] = json.loads(Path(args.out).read_text()).get("notes", [])
    Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
