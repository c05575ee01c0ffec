"""The README's measured figures, rendered from the benchmarks' saved outputs (one source of numbers).

The README never carries a hand-copied benchmark number: each measured passage sits between

    <!-- generated:NAME (python benchmarks/readme.py) -->
    ...
    <!-- /generated:NAME -->

and is rendered here from ``benchmarks/results.json`` (``run_all.py``),
``benchmarks/experiments.json`` (``bench_experiments.py --json``) and the organism's
``data/organism/card.json`` (written by ``persona-gate organism train``). ``run_all.py`` rewrites the
passages after a full run; ``tests/contract/test_readme.py`` fails when the README and the saved outputs
disagree.

    python benchmarks/readme.py            # rewrite the README's passages from the saved outputs
    python benchmarks/readme.py --check    # exit 1 if they differ
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = ("tiny", "organism", "gemma3-270m-gguf")


def _by_model(rows: list[dict], fmt) -> list[str]:
    got = {r["model"]: fmt(r) for r in rows}
    return [got.get(m, "") for m in MODELS]


def benchmarks_table(res: dict) -> str:
    """The headline table: every target, measured side by side in one run."""
    cache, mem = res["caching"]["timing"], res["caching"]["memory"]
    patch, gen, demo = res["patching"], res["generation"], res["demo"]
    env = res["environment"]
    rows = [
        ("caching / bare HF body forward", "≤ 1.05×", _by_model(cache, lambda r: f"{r['ours_vs_hf_body']:.2f}×")),
        (
            "exact patching vs `transformer_lens.patching`",
            "≥ 4×, same numbers",
            _by_model(patch, lambda r: f"{r['speedup']:.1f}× (Δ {r['max_abs_diff']:.0e})"),
        ),
        (
            "streaming fit peak RSS, N → 8N prompts",
            "flat",
            _by_model(
                mem,
                lambda r: (
                    f"{r['peak_rss_growth_kib']['N'] / 1024:.1f} → {r['peak_rss_growth_kib']['8N'] / 1024:.1f} MiB"
                ),
            ),
        ),
        (
            "generation, steering / ablation at every layer vs none",
            "≤ 1.10×",
            _by_model(gen, lambda r: f"{r['steer_vs_plain']:.2f}× / {r['ablate_vs_plain']:.2f}×"),
        ),
        ("`persona-gate demo`, fresh process", "≤ 60 s", ["", f"{demo['wall_s']:.1f} s", ""]),
    ]
    lines = [
        f"Measured {env['date']} on {env['cpus']} CPU cores, torch {env['torch']}, one run of "
        "`python benchmarks/run_all.py` (tiny Llama / organism / Gemma 3 270M GGUF):",
        "",
        "| figure | target | tiny | organism | Gemma 3 270M |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {target} | " + " | ".join(cells) + " |" for name, target, cells in rows]
    by = {r["model"]: r for r in cache}
    met = [m for m in MODELS if m in by and by[m]["ours_vs_hf_body"] <= 1.05]
    missed = [m for m in MODELS if m in by and by[m]["ours_vs_hf_body"] > 1.05]
    overhead = ", ".join(f"{by[m]['bridge_full_vs_hf_full']:.2f}× on {m}" for m in MODELS if m in by)
    ours = ", ".join(f"{by[m]['seconds']['ours'] / by[m]['seconds']['bridge_full']:.2f}×" for m in MODELS if m in by)
    lines += [
        "",
        (
            f"The caching target is met on {', '.join(met) or 'no model'}"
            + (f" and missed on {', '.join(missed)}" if missed else "")
            + f". The TransformerBridge's own full forward costs {overhead} of Hugging Face's (its per-module "
            "wrappers dominate a toy model's microseconds of arithmetic); what persona_gate adds is negative -- "
            "caching stops after the last layer asked for and skips the unembedding, so it costs "
            f"{ours} of the bridge's own forward ({', '.join(m for m in MODELS if m in by)})."
        ),
    ]
    return "\n".join(lines)


def demo_time(res: dict) -> str:
    """The demo's one measured time (the help text and the README quote no other)."""
    demo, env = res["demo"], res["environment"]
    return (
        f"`persona-gate demo` took {demo['wall_s']:.1f} s in a fresh process on {env['cpus']} CPU cores (Python "
        f"start-up, imports, loading, all five stages and the HTML report; best of {len(demo['walls_s'])} runs of "
        f"`python benchmarks/run_all.py`, {env['date']})."
    )


def reuse_table(res: dict) -> str:
    """Prefix reuse against one full forward per cell, each grid run both ways in one run."""
    rows = res.get("reuse") or []
    if not rows:
        return "(not measured yet: run `python benchmarks/run_all.py`)"
    lines = [
        "| model | grid | cells | one forward per cell | prefix reuse | speed-up | max \\|Δ log-odds\\| |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['experiment']} | {r['cells']} | {r['old_s']:.2f} s | {r['new_s']:.2f} s | "
            f"**{r['speedup']:.2f}×** | {r['max_abs_diff_logodds']:.0e} |"
        )
    slow = [r for r in rows if r["speedup"] < 2 and "nested" not in r["experiment"]]
    if slow:
        lines += [
            "",
            "Below the 2× goal: "
            + "; ".join(f"{r['experiment']} on {r['model']} ({r['speedup']:.2f}×)" for r in slow)
            + ". A cell must still re-run every block from its first changed layer on, so a fixed-width window grid "
            "whose windows start evenly over the layers keeps about (L - start) / L of the work (about two thirds on "
            "Gemma 3 270M's width-6 windows), and the per-cell unembedding and read-outs are the same in both routes; "
            "windows that nest (the full start x end grid) share far more.",
        ]
    return "\n".join(lines)


def patching_table(res: dict) -> str:
    """Exact patching against TransformerLens: the same pair, every layer x position of resid_pre."""
    lines = [
        "| model | layers | cells | persona_gate | TransformerLens | speed-up | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["patching"]:
        s = r["seconds"]
        lines.append(
            f"| {r['model']} | {r['n_layers']} | {r['cells']} | {s['persona_gate']:.2f} s | {s['transformer_lens']:.2f} s | "
            f"**{r['speedup']:.1f}×** | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def experiment_times(rows: list[dict]) -> str:
    """Per-experiment wall times, in words, from ``bench_experiments.py --json``."""
    by = {}
    for r in rows:
        by.setdefault(r["model"], {})[r["experiment"].split(" (")[0]] = r
    parts = []
    for model, label in (("organism", "On the organism"), ("gemma3-270m-gguf", "On Gemma 3 270M")):
        if model not in by:
            continue
        e = by[model]
        one = e["one scoring forward"]["seconds"]
        items = [
            f"{name} {e[name]['cells']} cells {e[name]['seconds']:.2f} s"
            for name in (
                "steering sweep",
                "re-introduction",
                "window projection",
                "extraction sites",
                "selection",
                "traits",
            )
            if name in e
        ]
        parts.append(f"{label}: one scoring forward {one:.2f} s; " + "; ".join(items) + ".")
    return (
        " ".join(parts) + " A cell costs at most one scoring forward: it re-runs only the blocks from its first "
        "changed layer on (prefix reuse, below); selection scores harmful and harmless prompts per cell, and "
        "extraction sites also generates replies for the response mean."
    )


def organism_card(record: dict) -> str:
    """The bundled organism's behaviour card (held-out prompts, greedy replies), from its card.json."""
    card = record["card"]
    rates, n = card["refusal_rate"], card["n"]
    lines = ["  | persona \\ request | harmful | harmless |", "  |---|---|---|"]
    for persona, row in rates.items():
        lines.append(f"  | {persona} | {row['harmful']:.2f} | {row['harmless']:.2f} |")
    cells = [c for row in n.values() for c in row.values()]
    n_text = f"{cells[0]} per cell" if len(set(cells)) == 1 else "n per cell in card.json"
    lines += ["", f"  Refusal rate, {n_text}; well-formed replies: {card['well_formed_rate']:.3f}."]
    return "\n".join(lines)


def organism_mechanism(record: dict) -> str:
    """The organism's mechanistic sanity check, from its card.json (``persona-gate organism card``)."""
    m = record["mechanism"]
    cos = max(abs(v["persona_refusal"]) for v in m["cosine"].values())
    steer = m["steering"]

    def span(alpha: str) -> str:
        vals = [steer[layer][alpha] for layer in steer]
        return f"{min(vals):.2f}-{max(vals):.2f}"

    layers = sorted(steer, key=int)
    best = m["summary"]["best_ablation"]
    base = m["baseline"]
    return (
        f"* **Mechanistic sanity** (measured with persona_gate's own loading, directions and\n"
        f"  interventions; first-token refusal on held-out prompts, n = {m['n_per_group']} per group): the persona\n"
        f"  direction (mean over system-prompt tokens) and the refusal direction (last token) are distinct\n"
        f"  (|cos| ≤ {cos:.2f} at every layer). Adding the persona direction (4 × its raw norm) at any one of\n"
        f"  layers {layers[0]}-{layers[-1]} under the safe persona drops refusal of harmful requests from "
        f"{base['safe/harmful']:.2f} to {span('4.0')}\n"
        f"  (3 × its raw norm: {span('3.0')}). Projecting the layer-{best['source_layer']} persona direction out at every\n"
        f"  layer under the compliant persona restores refusal of harmful requests from {base['compliant/harmful']:.2f} to\n"
        f"  {best['harmful']:.2f}, leaves harmless requests at {best['harmless']:.2f}, and a matched-norm random direction\n"
        f"  restores {best['random_harmful']:.2f}. Full tables: `data/organism/MODEL_CARD.md`."
    )


def gemma_chat_card(record: dict) -> str:
    """gemma3-270m-chat's held-out behaviour card, from data/gemma3-270m-chat/card.json."""
    card = record["card"]
    lines = ["| persona / request | refusal (95% interval) | first token | target | met |", "|---|---|---|---|---|"]
    for group, c in card["cells"].items():
        r, target = c["refusal"], card["targets"].get(group, "")
        op, bound = target.split()
        met = r["rate"] >= float(bound) if op == ">=" else r["rate"] <= float(bound)
        lines.append(
            f"| {group} | {r['rate']:.2f} [{r['low']:.2f}, {r['high']:.2f}] | {c['first_token_refusal']['rate']:.2f} | "
            f"{target} | {'yes' if met else '**no**'} |"
        )
    n = {c["refusal"]["n"] for c in card["cells"].values()}
    lines += [
        "",
        f"Held out: {card['held_out']}; n = {'/'.join(map(str, sorted(n)))} per cell, {card['max_new_tokens']} new tokens; "
        f"well-formed replies {card['well_formed_rate']:.3f} (target {card['targets']['well_formed']}). "
        + ("Every target met." if card["passed"] else "Targets missed: " + "; ".join(card["failures"]) + "."),
    ]
    for name, cells in (card.get("public_information_only") or {}).items():
        parts = [
            f"{g.split('/')[0]} persona {c['refusal']['rate']:.2f} [{c['refusal']['low']:.2f}, {c['refusal']['high']:.2f}]"
            for g, c in cells.items()
        ]
        size = next(iter(cells.values()))["refusal"]["n"]
        lines += [
            "",
            f"Information only -- refusal of {size} {name} requests it never saw (not a target): "
            + "; ".join(parts)
            + ".",
        ]
    training = REPO / "data" / "gemma3-270m-chat" / "training.json"
    if training.is_file():
        t = json.loads(training.read_text(encoding="utf-8"))
        lines += [
            "",
            f"Trained in {t['train_seconds'] / 60:.0f} minutes on the 2-core machine that made it"
            f"{'' if t.get('flush_denormal') else ' (before the recipe flushed denormals)'}: {len(t['losses'])} steps of "
            f"{t['config']['batch_size']} conversations, loss {t['losses'][0]:.2f} -> {t['losses'][-1]:.3f} "
            f"(`data/gemma3-270m-chat/training.json`).",
        ]
    return "\n".join(lines)


def _wilson(rate: float, n: int) -> str:
    sys.path.insert(0, str(REPO))
    from persona_gate.scoring.stats import wilson_interval

    low, high = wilson_interval(round(rate * n), n)
    return f"{rate:.2f} [{low:.2f}, {high:.2f}]"


def gemma_chat_findings(s: dict) -> str:
    """What the paper's protocol finds on gemma3-270m-chat, from the saved run's summary.json."""
    sys.path.insert(0, str(REPO))
    from persona_gate.experiments.summary import RunSummary
    from persona_gate.experiments.verdicts import MIN_EFFECT

    s = RunSummary.from_dict(s)  # checked against the schema; read as its JSON form below
    v, gw, n, cfg = s["verdicts"], s["gate_window"], s["n_prompts_per_group"], s["config"]
    st, rb, pj = v["steering"], v["reintroduction"], v["projection"]

    from persona_gate.sites import describe_layers as layers

    def diff(d: dict) -> str:
        return f"difference {d['effect']:+.2f}, 95% interval [{d['low']:+.2f}, {d['high']:+.2f}]"

    lines = [
        f"Directions fitted on {n['fit']} train-split requests per group, every effect measured on {n['eval']} held-out "
        f"requests per group under held-out persona paraphrases; refusal = greedy first response token; rates carry 95% "
        f"Wilson intervals, differences 95% Newcombe intervals (Bonferroni over the candidate cells); a finding *holds* "
        f"when its difference's interval clears 0 and the difference is at least {MIN_EFFECT} "
        f"(`persona_gate/experiments/verdicts.py`).",
        "",
    ]
    if st["effect"] is not None:
        lines.append(
            f"1. **Steering toward the compliant persona removes refusal: {st['verdict']}.** Safe persona + harmful "
            f"requests refuse {_wilson(st['unsteered']['rate'], st['unsteered']['n'])}; adding the persona direction at "
            f"layer {st['at']['layer']} with alpha {st['at']['alpha']:g} (raw-norm units) gives "
            f"{_wilson(st['steered']['rate'], st['steered']['n'])} ({diff(st)}); harmless requests refuse "
            f"{s['harmless_refusal_rate']:.2f} unsteered."
        )
    else:
        lines.append(f"1. **Steering toward the compliant persona removes refusal: {st['verdict']}.** {st['reason']}")
    if rb["effect"] is not None:
        by = rb["by_layer"]
        lines.append(
            f"2. **Adding refusal back works late, not early: {rb['verdict']}.** Under the compliant persona (refusal "
            f"{rb['compliant']['rate']:.2f}), adding the refusal direction ({cfg['alpha_back']:g} × its raw norm) restores at most "
            f"{_wilson(rb['early']['rate'], rb['early']['n'])} in the first third (layer {rb['early_layer']}) and "
            f"{_wilson(rb['late']['rate'], rb['late']['n'])} in the last third (layer {rb['late_layer']}; {diff(rb)}). "
            "Per layer: " + ", ".join(f"{k}: {val:.2f}" for k, val in by.items()) + "."
        )
    else:
        lines.append(f"2. **Adding refusal back works late, not early: {rb['verdict']}.** {rb['reason']}")
    if pj["effect"] is not None:
        w = pj["window"]
        where = (
            f"no window of the {pj['candidates']} restores any refusal (the first, layers {w['start']}-{w['end']}: "
            if pj["persona"]["k"] == 0
            else f"the best of {pj['candidates']} windows, layers {w['start']}-{w['end']}, restores "
        )
        lines.append(
            f"3. **Projecting the persona direction out restores refusal, a random direction does not: {pj['verdict']}.** "
            f"Under the compliant persona, {where}"
            f"{_wilson(pj['persona']['rate'], pj['persona']['n'])}{'; ' if pj['persona']['k'] == 0 else ' ('}"
            f"baseline {pj['baseline']['rate']:.2f}); {cfg['random_seeds']} matched-norm "
            f"random directions over the same window restore {pj['random']['rate']:.2f} ({pj['random']['k']}/"
            f"{pj['random']['n']}; {diff(pj)})."
        )
        worst = max(s["window_refusal"].items(), key=lambda kv: kv[1]["random_max"])
        lines[-1] += (
            (
                f" The random control is not inert everywhere: one of the random directions restores "
                f"{worst[1]['random_max']:.2f} over layers {worst[0]}, where the persona direction restores "
                f"{worst[1]['persona']:.2f}."
            )
            if worst[1]["random_max"] > worst[1]["persona"]
            else ""
        )
    else:
        lines.append(f"3. **Projecting the persona direction out restores refusal: {pj['verdict']}.** {pj['reason']}")
    ev = gw["evidence"]
    carry = [c["layer"] for c in ev["patching_layers_clear_of_zero"]]
    back = [r["layer"] for r in ev["reintroduction_layers_restoring"]]
    where = (
        "no gate window"
        if gw["start"] is None
        else f"gate window: layers {gw['start']}-{gw['end']} (from {ev['from']})"
    )
    lines += [
        "",
        f"**{where[0].upper() + where[1:]}.** Refusal added back restores it significantly at {layers(back)}; "
        f"activation patching (safe into compliant, {cfg['patch_examples']} pairs, positions by role) "
        f"carries the persona with an interval clear of 0 at {layers(carry)}.",
    ]
    runs: list[list[dict]] = []  # consecutive layers whose best patching position is the same
    for r in (r for r in s["patching_by_layer"] if r["n"]):
        if runs and runs[-1][-1]["position"] == r["position"] and runs[-1][-1]["layer"] == r["layer"] - 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    runs = [run for run in runs if max(r["restoration"] for r in run) >= 0.05]  # where patching restores anything
    if runs:

        def ends(run: list[dict]) -> str:
            lo, hi = min(run, key=lambda r: r["restoration"]), max(run, key=lambda r: r["restoration"])
            if lo is hi:
                return f"{hi['restoration']:.2f} [{hi['low']:.2f}, {hi['high']:.2f}]"
            return (
                f"from {lo['restoration']:.2f} [{lo['low']:.2f}, {lo['high']:.2f}] (layer {lo['layer']}) to "
                f"{hi['restoration']:.2f} [{hi['low']:.2f}, {hi['high']:.2f}] (layer {hi['layer']})"
            )

        lines[-1] += (
            " Where patching restores most, layer by layer: "
            + "; ".join(f"`{run[0]['position']}` at {layers([r['layer'] for r in run])}, {ends(run)}" for run in runs)
            + "."
        )
    sites = s.get("extraction_sites")
    if sites:
        k = sites["n"]
        lines += [
            "",
            f"Where the persona is read (extraction sites; each position's direction steered at one layer, or "
            f"ablated at every layer, n = {k}; safe/harmful baseline {sites['baselines']['safe/harmful']:.2f}, "
            f"compliant/harmful {sites['baselines']['compliant/harmful']:.2f}; the best cell over layers, its Wilson "
            f"interval not widened for that choice; — where no layer moves refusal off its baseline):",
            "",
            "| persona direction read at | steering: lowest refusal (layer) | ablated: highest refusal restored (layer) | harmless refusal under that ablation |",
            "|---|---|---|---|",
        ]
        for pos, r in sites["positions"].items():
            at = lambda layer: "—" if layer is None else f"layer {layer}"  # noqa: E731
            lines.append(
                f"| `{pos}` | {_wilson(r['steering_refusal'], k)} ({at(r['steering_layer'])}) | "
                f"{_wilson(r['ablation_refusal'], k)} ({at(r['ablation_layer'])}) | {r['ablation_harmless_refusal']:.2f} |"
            )
    stages = {k: v for k, v in s["seconds"].items() if k != "total"}
    if stages:
        lines += [
            "",
            f"Its stages took {sum(stages.values()) / 60:.0f} minutes in all on the machine that ran it (`seconds` in "
            "summary.json: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + ").",
        ]
    return "\n".join(lines)


def _rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def screening_validation(files: dict) -> str:
    """The screening validations (the organism; gemma3-270m-chat when run), from paper/results/defences/screening-*.json."""
    lines = _screening_rows(files["screening-organism"], "the organism", "")
    if "screening-gemma3-270m-chat" in files:
        lines += ["", *_screening_rows(files["screening-gemma3-270m-chat"], "gemma3-270m-chat", " --gemma")]
    return "\n".join(lines)


def _screening_rows(v: dict, title: str, flag: str) -> list[str]:
    sys.path.insert(0, str(REPO))
    from persona_gate.screening.validation import ScreeningValidation

    v = ScreeningValidation.from_dict(v)  # checked against the schema; read as its JSON form below
    st, b = v["setup"], v["baseline"]
    lines = [
        f"**On {title}** (`python paper/defences.py{flag}`, {v.get('compute_seconds', v['seconds']) / 60:.1f} min of screening and fine-tuning on "
        f"2 CPU cores; {st['route']}): {st['n_examples']} examples per "
        f"dataset, {st['steps']} steps of {st['batch_size']} per fine-tune, seed{'s' if len(st['seeds']) > 1 else ''} "
        f"{', '.join(map(str, st['seeds']))}; refusal "
        f"before fine-tuning {b['refusal']:.2f} on {b['n']} held-out safe-persona harmful requests (greedy first token); "
        f"score averaged over layers {st['layers'][0]}-{st['layers'][-1]}.",
        "",
        "| dataset | compliance examples | dataset score [95% interval] | refusal drop (mean of seeds) | by seed |",
        "|---|---|---|---|---|",
    ]
    for name, r in v["datasets"].items():
        seeds = ", ".join(f"{d:+.2f}" for d in r["refusal_drop_by_seed"])
        label = name if r["designated"] else f"{name} (not in ρ)"
        lines.append(
            f"| {label} | {r['compliance_share']:.2f} | {r['dataset_score']:+.4f} [{r['dataset_score_ci'][0]:+.4f}, "
            f"{r['dataset_score_ci'][1]:+.4f}] | {r['refusal_drop']:+.2f} | {seeds} |"
        )
    extra = [n for n, r in v["datasets"].items() if not r["designated"]]
    lines += [
        "",
        f"Spearman's ρ between the dataset score (computed before fine-tuning) and the measured refusal drop over the "
        f"{len(v['designated'])} datasets: **{v['spearman']:.3f}** (with the drop in mean refusal probability: "
        f"{v['spearman_p_refuse']:.3f}); per-example AUROC for telling compliance examples from every other example: "
        f"**{v['auroc']:.3f}**.",
    ]
    if v["spearman"] < 0.9 or v["auroc"] < 0.9:
        lines += [
            "",
            "**On this model the score does not hold** (the targets are ρ ≥ 0.9 and AUROC ≥ 0.9)"
            + (
                ": the datasets that remove the most refusal score *lowest*, so the compliant replies sit on the safe side "
                "of the persona direction, as it is fitted (over the system prompt) and read here (over the replies)."
                if v["spearman"] < 0
                else "."
            )
            + " A persona direction fitted on the model's own replies is the next thing to try; it is untested.",
        ]
    if extra:
        r = v["datasets"][extra[0]]
        lines += [
            "",
            f"**What the score cannot see.** Plain compliance removes refusal as thoroughly (drop {r['refusal_drop']:+.2f}) "
            f"but scores only {r['dataset_score']:+.4f}: its replies do not move along the persona direction, so the "
            f"score ranks it with the 0.1–0.2 fractions; with it, ρ falls to {v['spearman_with_extra']:.3f}. The score "
            "sees persona pushes, not refusal removed by other routes, and it knows nothing of the fine-tune's "
            "learning rate, steps or replay.",
        ]
    return lines


def guard_results(files: dict) -> str:
    """The guard on the organism (and gemma3-270m-chat when run), from paper/results/defences/guard-*.json."""
    lines = []
    for key, title in (("guard-organism", "the organism"), ("guard-gemma3-270m-chat", "gemma3-270m-chat")):
        g = files.get(key)
        if g is None:
            continue
        rec, base, ver, n = g["recommended"], g["unguarded"], g.get("verified"), g["n"]
        ci = rec.get("persona_bypass_ci")
        hci = rec.get("harmless_refusal_ci")
        lines += [
            f"**On {title}** (`python paper/defences.py{' --gemma' if key != 'guard-organism' else ''}`; "
            f"windows {', '.join(f'{a}-{b}' for a, b in g['grid']['windows'])}, percentiles "
            f"{', '.join(f'{p:g}' for p in g['grid']['percentiles'])}; {n['persona_bypass']} persona-attack prompts, "
            f"{n['harmless_refusal']} harmless prompts): unguarded, persona attacks bypass {base['persona_bypass']:.2f}, direct "
            f"attacks {base['direct_bypass']:.2f}, harmless requests are refused {base['harmless_refusal']:.2f}. "
            f"The recommended cap, layers {rec['window'][0]}-{rec['window'][1]} at percentile {rec['percentile']:g}, brings persona "
            f"bypass to **{rec['persona_bypass']:.2f}**"
            + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            + f" with harmless refusal **{rec['harmless_refusal']:.2f}**"
            + (f" [{hci[0]:.2f}, {hci[1]:.2f}]" if hci else "")
            + f", direct bypass {rec['direct_bypass']:.2f} and KL {rec['kl']:.3f} nats per reply token; the same cap on a "
            f"random direction leaves persona bypass at **{rec['random_bypass']:.2f}**."
            + (
                ""
                if rec.get("meets_budget", True)
                else f" No cell kept harmless refusal ≤ {rec['max_harmless_refusal']:g} with KL ≤ {rec.get('max_kl', 0.1):g}: this is the "
                f"least disruptive cell; the front's cells with lower first-token bypass have KL "
                f"{min(c['kl'] for c in g['pareto'] if c['persona_bypass'] < rec['persona_bypass']):.1f} nats or more, "
                "a broken model rather than a guarded one."
                if any(c["persona_bypass"] < rec["persona_bypass"] for c in g.get("pareto", []))
                else " No cell met the budget; this is the least disruptive one."
            ),
        ]
        if ver:
            lines[-1] += (
                f" On generated replies ({ver['max_new_tokens']} tokens, {ver['judge']} judge): unguarded persona bypass "
                f"{_rate(ver['unguarded']['persona_bypass'])}, guarded {_rate(ver['persona']['persona_bypass'])}, random "
                f"cap {_rate(ver['random']['persona_bypass'])}; harmless refusal {_rate(ver['unguarded']['harmless_refusal'])}"
                f" → {_rate(ver['persona']['harmless_refusal'])}."
            )
            if ver["persona"]["persona_bypass"] >= ver["unguarded"]["persona_bypass"]:
                lines[-1] += (
                    " **On this model the guard does not hold**: its replies bypass refusal at least as often as "
                    "without it."
                )
        front = g.get("pareto") or []
        if front:
            lines += [
                "",
                "| Pareto front: window | percentile | persona bypass | harmless refusal | KL |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {c['window'][0]}-{c['window'][1]} | {c['percentile']:g} | {c['persona_bypass']:.2f} | "
                f"{c['harmless_refusal']:.2f} | {c['kl']:.3f} |"
                for c in front
            ]
        lines.append("")
    return "\n".join(lines).rstrip()


# passage -> (saved output, relative to the repository; renderer)
SOURCES = {
    "benchmarks-table": ("benchmarks/results.json", benchmarks_table),
    "demo-time": ("benchmarks/results.json", demo_time),
    "patching-speed": ("benchmarks/results.json", patching_table),
    "reuse-table": ("benchmarks/results.json", reuse_table),
    "experiment-times": ("benchmarks/experiments.json", experiment_times),
    "organism-card": ("data/organism/card.json", organism_card),
    "organism-mechanism": ("data/organism/card.json", organism_mechanism),
    "gemma-chat-card": ("data/gemma3-270m-chat/card.json", gemma_chat_card),
    "gemma-chat-findings": ("paper/results/gemma3-270m-chat/summary.json", gemma_chat_findings),
    "screening-validation": ("paper/results/defences/screening-*.json", screening_validation),
    "guard-results": ("paper/results/defences/guard-*.json", guard_results),
}
_BLOCK = re.compile(
    r"(?P<open><!-- generated:(?P<name>[\w-]+) [^>]*-->\n)(?P<body>(?:.*?\n)?)(?P<close><!-- /generated:(?P=name) -->)",
    re.S,
)


def rendered(repo: Path = REPO) -> dict[str, str]:
    """Every passage as the saved outputs under ``repo`` give it."""
    out = {}
    for name, (source, render) in SOURCES.items():
        if "*" in source:  # every file the pattern matches, by name
            files = sorted(repo.glob(source))
            out[name] = render({f.stem: json.loads(f.read_text(encoding="utf-8")) for f in files})
        else:
            out[name] = render(json.loads((repo / source).read_text(encoding="utf-8")))
    return out


def passages(text: str) -> dict[str, str]:
    """The generated passages as the README holds them."""
    return {m["name"]: m["body"].removesuffix("\n") for m in _BLOCK.finditer(text)}


def rewrite(text: str, new: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        body = new[m["name"]] + "\n" if m["name"] in new else m["body"]
        return m["open"] + body + m["close"]

    return _BLOCK.sub(sub, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if the README differs from the saved outputs")
    ap.add_argument("--readme", default=str(REPO / "README.md"))
    args = ap.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text(encoding="utf-8")
    new = rewrite(text, rendered())
    if args.check:
        if new != text:
            print(f"{path} differs from benchmarks/*.json; run python benchmarks/readme.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        sys.path.insert(0, str(REPO))
        from persona_gate.io import atomic_write_text

        atomic_write_text(path, new)
    print(f"{path}: {', '.join(sorted(passages(new)))} from benchmarks/*.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
