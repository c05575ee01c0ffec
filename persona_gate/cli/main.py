"""The ``persona-gate`` command: thin wrappers that parse, call one library function, save, print.

Logging set-up and environment handling live in :func:`main` only; the library itself logs and
never prints.

Example::

    persona-gate directions                      # bundled organism, offline
    persona-gate directions --model path/to/model.gguf --chat-template gemma --n 32
    persona-gate organism train --out data/organism --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from . import export as export_cli
from . import organism as organism_cli
from ..errors import ConfigError, PersonaGateError


def _number_list(text: str, flag: str, convert, kind: str, example: str, noun: str, hint: str = "") -> list:
    """Comma-separated numbers of one option; an empty entry, a bad one or none at all is a one-line usage error."""
    parts = text.split(",")
    if len(parts) > 1 and any(not x.strip() for x in parts):
        raise argparse.ArgumentTypeError(f"{flag} has an empty entry in {text!r}; write comma-separated {kind} such as {example}")
    try:
        values = [convert(x) for x in parts if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} takes comma-separated {kind}, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{flag} got no {noun}; pass comma-separated {kind} such as {example}{hint}")
    return values


def _layers(text: str) -> list[int]:
    return _number_list(text, "--layers", int, "integers", "4,8,12", "layer", " (or omit it for all)")


def _seeds(text: str) -> list[int]:
    return _number_list(text, "--seeds", int, "integers", "0,1,2", "seed")


def _percentiles(text: str) -> list[float]:
    return _number_list(text, "--percentiles", float, "numbers", "50,75,90", "number")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="organism", help="'organism' (default), a local folder, a .gguf file or a hub name")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--chat-template", default=None, help="chatml, gemma, llama3 or Jinja text, for tokenizers without one")


def _cmd_directions(args: argparse.Namespace) -> int:
    from ..core.contrasts import fit_persona_and_refusal, format_summary
    from ..models.loading import load_chat_model

    t0 = time.perf_counter()
    if args.out is not None:
        _claim(args.out, "directions", "directions")
    model = load_chat_model(args.model, dtype=args.dtype, device=args.device, chat_template=args.chat_template)
    pr = fit_persona_and_refusal(
        model,
        layers=args.layers,
        kind=args.kind,
        refusal_position=args.refusal_position,
        persona_position=args.persona_position,
        n_per_group=args.n,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        seed=args.seed,
    )
    print(format_summary(pr))
    if args.out is not None:
        out = Path(args.out)
        pr.refusal.save(out / "refusal")
        pr.persona.save(out / "persona")
        pr.persona_last.save(out / "persona_last")
        from ..provenance import versions

        _write_summary(out, {"model": args.model, "rows": pr.rows(), "counts": pr.means.counts, "seed": args.seed,
                             "versions": versions(), "wall_s": round(time.perf_counter() - t0, 2)}, indent=1)
        print(f"\nsaved directions to {out}/ (refusal, persona, persona_last, summary.json)")
    return 0


def _print_summary(summary: dict, out: Path) -> None:
    print(f"model {summary['model']} ({summary['n_layers']} layers)")
    if summary.get("reused_stages"):
        print(f"  reused finished stages from {out}/: {', '.join(summary['reused_stages'])} (delete them to recompute)")
    v, gw = summary["verdicts"], summary["gate_window"]
    for key, label in (("steering", "persona steering removes refusal:"), ("reintroduction", "refusal added back, late not early:"),
                       ("projection", "persona projected out beats random:")):  # fmt: skip
        d = v[key]
        numbers = "" if d["effect"] is None else f" (difference {d['effect']:+.2f}, 95% [{d['low']:+.2f}, {d['high']:+.2f}])"
        print(f"  {label:<38}{d['verdict']}{numbers}")
    where = "none found" if gw["start"] is None else f"layers {gw['start']}-{gw['end']} (from {gw['evidence']['from']})"
    print(f"  gate window:                          {where}")
    print(f"  refusal, safe persona + harmful:      {summary['baseline_refusal_rate']:.2f}")
    print(f"  refusal, compliant persona + harmful: {summary['compliant_persona_refusal_rate']:.2f}")
    at = summary["steered_at"]
    print(f"  refusal, persona steering (layer {at['layer']}, alpha {at['alpha']}): {summary['steered_refusal_rate']:.2f}")
    print(f"  refusal, harmless requests:           {summary['harmless_refusal_rate']:.2f}")
    back = ", ".join(f"{k}: {v:.2f}" for k, v in summary["reintroduction_refusal_by_layer"].items())
    print(f"  refusal added back per layer:         {back}")
    best = max(summary["window_refusal"].items(), key=lambda kv: kv[1]["persona"])
    print(f"  best persona window {best[0]}: {best[1]['persona']:.2f} (random max {best[1]['random_max']:.2f})")
    print(f"  gate layers (patching >= 0.5):        {summary['gate_layers'] or 'none'}")
    at = lambda layer: "no layer changes it" if layer is None else f"layer {layer}"  # noqa: E731
    for pos, row in (summary.get("extraction_sites") or {}).get("positions", {}).items():
        print(f"  persona read at {pos + ':':<22}steers refusal to {row['steering_refusal']:.2f} ({at(row['steering_layer'])}), "
              f"ablated restores {row['ablation_refusal']:.2f} ({at(row['ablation_layer'])})")
    print(f"  {summary['seconds'].get('total', 0):.1f} s; results in {out}/ (summary.json)")


def _plan(cfg: Any, args: argparse.Namespace) -> int:
    """``run --plan``: what the run would execute, per stage, and what it would cost."""
    from ..experiments.plan import accelerator_flops, format_plan, plan_run
    from ..models.loading import load_chat_model

    if args.flops is not None:
        accelerator_flops(args.flops)  # a bad name fails before the model loads
    model = load_chat_model(cfg.model, dtype=cfg.dtype, device=cfg.device, chat_template=cfg.chat_template)
    plan = plan_run(cfg, model, args.out, accelerator=args.flops, mfu=args.mfu)
    print(format_plan(plan))
    if args.plan_json:
        from ..io import atomic_write_text

        atomic_write_text(Path(args.plan_json), json.dumps(plan, indent=1))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ..experiments.pipeline import DEMO, RunConfig, run_pipeline

    overrides = {"model": args.model, "dtype": args.dtype, "device": args.device, "device_map": args.device_map,
                 "chat_template": args.chat_template}  # fmt: skip
    if args.command == "demo":
        cfg = RunConfig.from_dict({**dataclass_dict(DEMO), **{k: v for k, v in overrides.items() if v is not None}})
    elif args.config is not None:
        cfg = RunConfig.from_toml(args.config, **overrides)
    else:
        cfg = RunConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    if getattr(args, "plan", False):
        return _plan(cfg, args)
    if getattr(args, "flops", None) is not None:
        raise ConfigError("--flops estimates the cost plan's time; add --plan (persona-gate run --plan --flops H100 ...).")
    if args.out is None:
        raise ConfigError("persona-gate run needs --out (the run folder; re-running resumes it), or --plan to only plan.")
    from ..grid import from_environment

    out = Path(args.out)
    workers = from_environment()
    summary = run_pipeline(cfg, out, progress=not args.no_progress and workers.lead)
    if not workers.lead:
        return 0  # process 0 reports for all
    _print_summary(summary, out)
    from ..plots.report import write_report

    print(f"report: {write_report(out)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ..plots.report import write_report

    print(f"report written to {write_report(args.run_dir, args.out)}")
    return 0


def _claim(out: str | Path, kind: str, command: str) -> Path:
    """The output folder, checked (new, empty or this command's own kind) before any work."""
    from ..io import claim_folder

    return claim_folder(out, kind, written_by=f"persona-gate {command}")


def _load_model(args: argparse.Namespace):
    from ..models.loading import load_chat_model

    return load_chat_model(args.model, dtype=args.dtype, device=args.device, chat_template=args.chat_template)


def _fit_and_save(model, args: argparse.Namespace, out: Path, *names: str) -> list:
    """Fit the standard directions (no --directions given) and save the sets ``names`` under ``out``."""
    from ..core.contrasts import fit_persona_and_refusal

    pr = fit_persona_and_refusal(model, progress=not args.no_progress, seed=args.seed)
    sets = [getattr(pr, name) for name in names]
    for name, ds in zip(names, sets):
        ds.save(out / name)
    return sets


def _cmd_redteam(args: argparse.Namespace) -> int:
    from ..plots import fig_red_team, save_html
    from ..redteam.harness import load_persona_directions, read_requests, red_team

    requests = read_requests(args.requests) if args.requests is not None else None  # bad input fails before any work
    out = _claim(args.out, "redteam", "redteam")
    model = _load_model(args)
    if args.directions is not None:
        persona = load_persona_directions(args.directions, model)
    else:
        (persona,) = _fit_and_save(model, args, out, "persona")
    rt = red_team(
        model,
        persona,
        requests,
        families=[f.strip() for f in args.families.split(",") if f.strip()],
        system=args.system,
        layer=args.layer,
        position=args.position,
        n=args.n,
        generate_labels=not args.no_generate,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(rt.format_table())
    rt.save(out / "red_team")
    html = save_html(fig_red_team(rt), out / "red_team.html")
    fitted = "" if args.directions is not None else "persona/ (fitted directions), "
    print(f"\nsaved to {out}/: {fitted}red_team/ (scores, projections, summary.json), {html.name}")
    return 0


def _windows(text: str) -> list[tuple[int, int]]:
    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            a, b = (int(x) for x in part.split("-")) if "-" in part else (int(part), int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--windows takes comma-separated START-END spans such as 3-5,2-6, got {text!r}") from None
        out.append((a, b))
    return out


def _persona_and_refusal(model, args: argparse.Namespace, out: Path, need_refusal: bool) -> tuple:
    """The persona (and refusal) directions of --directions, or fitted now and saved under ``out``."""
    from ..core.directions import DirectionSet
    from ..redteam.harness import load_persona_directions

    folder = Path(args.directions) if args.directions is not None else out
    if args.directions is None and not ((out / "persona").is_dir() and (out / "refusal").is_dir()):
        # Fitted once and kept: a re-run resumes on the same directions (a refit can differ in the last bits).
        _fit_and_save(model, args, out, "persona", "refusal")
    persona = load_persona_directions(folder, model)
    refusal = DirectionSet.load(folder / "refusal", model=model) if need_refusal else None
    return persona, refusal


def _write_summary(out: Path, summary: dict, indent: int = 2) -> Path:
    from ..io import atomic_write_text

    return atomic_write_text(out / "summary.json", json.dumps(summary, indent=indent) + "\n")


def _cmd_screen(args: argparse.Namespace) -> int:
    from ..plots import fig_screening, save_html
    from ..screening.data import read_chat_jsonl
    from ..screening.screen import screen
    from ..screening.summary import format_screening, screening_summary

    if args.data is None and not args.validate:
        raise ConfigError("pass the fine-tuning data (DATA.jsonl, one {\"messages\": [...]} per line), or --validate.")
    examples = read_chat_jsonl(args.data) if args.data is not None else None  # a malformed line fails before any work
    out = _claim(args.out, "screen", "screen")
    validation = None
    if args.validate:
        from ..screening.summary import format_validation
        from ..screening.validation import validate_screening

        validation = validate_screening(out / "validation", base=None if args.model == "organism" else args.model,
                                        steps=args.steps, seeds=args.seeds, n_examples=args.n_examples,
                                        progress=not args.no_progress)  # fmt: skip
        print(format_validation(validation))
    saved = []
    if examples is not None:
        model = _load_model(args)
        persona, _ = _persona_and_refusal(model, args, out, False)
        res = screen(model, persona, examples, layers=args.layers, max_tokens=args.max_tokens, batch_size=args.batch_size,
                     checkpoint=out / "screening.cells", progress=not args.no_progress)  # fmt: skip
        print(("\n" if validation else "") + format_screening(res, k=args.top))
        res.save(out / "screening")
        saved += ["screening/", save_html(fig_screening(res), out / "screening.html").name]
        summary = screening_summary(res, validation)
        summary["data"] = str(args.data)
    else:
        summary = {"dataset_score": None, "spearman": validation["spearman"], "validation": validation}  # type: ignore[index]
    _write_summary(out, summary)
    print(f"\nsaved to {out}/: {', '.join(saved + (['validation/'] if validation else []) + ['summary.json'])}")
    return 0


def _cmd_guard(args: argparse.Namespace) -> int:
    from ..guard.grid import guard_grid
    from ..guard.summary import format_guard, guard_summary
    from ..plots import fig_guard_grid, save_html

    out = _claim(args.out, "guard", "guard")
    model = _load_model(args)
    if args.windows is not None:  # checked against the model's depth before any direction is fitted
        from ..guard.intervention import check_window

        for w in args.windows:
            check_window(w, int(model.cfg.n_layers))
    persona, refusal = _persona_and_refusal(model, args, out, bool(args.readd_refusal))
    res = guard_grid(model, persona, refusal, windows=args.windows, width=args.width, percentiles=args.percentiles,
                     alpha=args.readd_refusal or 0.0, n=args.n, seed=args.seed, max_harmless_refusal=args.max_harmless_refusal,
                     max_kl=args.max_kl,
                     verify=not args.no_verify, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                     checkpoint=out / "guard.cells", progress=not args.no_progress)  # fmt: skip
    print(format_guard(res))
    res.save(out / "guard_grid")
    html = save_html(fig_guard_grid(res), out / "guard.html")
    _write_summary(out, guard_summary(res))
    print(f"\nsaved to {out}/: guard_grid/, {html.name}, summary.json")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..compare.checkpoints import compare_checkpoints
    from ..compare.summary import format_comparison, refusal_change
    from ..plots.compare_report import write_comparison_report

    out = _claim(args.out, "comparison", "compare")
    result = compare_checkpoints(
        args.model_a, args.model_b, layers=args.layers, n_per_group=args.n, n_eval=args.n_eval, seed=args.seed,
        batch_size=args.batch_size, dtype=args.dtype, device=args.device, progress=not args.no_progress,
    )
    print(format_comparison(result))
    change = refusal_change(result)["safe/harmful"]
    print(f"\nrefusal of safe-persona harmful requests changed by {change:+.2f} (B - A)")
    result.save(out / "comparison")
    report = write_comparison_report(result, out / "report.html")
    print(f"saved to {out}/: comparison/ (result), {report.name}")
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from ..monitoring.monitor import load_monitor_directions, monitor
    from ..monitoring.summary import format_monitor
    from ..monitoring.calibration import MonitorCalibration, calibrate, format_calibration
    from ..plots import fig_monitor_timeline, save_html

    from ..errors import ConfigError
    from ..monitoring.readings import as_conversation

    # Bad input fails before minutes of fitting and calibrating.
    conversation = as_conversation(args.conversation)
    settings = {"n_train": args.n_train, "n_test": args.n_test, "test_turns": args.turns, "target_fpr": args.target_fpr,
                "flag_reading": args.reading}  # fmt: skip
    given = {k: v for k, v in settings.items() if v is not None}
    if args.calibration is not None and given:
        flags = {"n_train": "--n-train", "n_test": "--n-test", "test_turns": "--turns", "target_fpr": "--target-fpr",
                 "flag_reading": "--reading"}  # fmt: skip
        raise ConfigError(f"{', '.join(flags[k] for k in given)} set how a calibration is made, and --calibration loads a "
                          "finished one; drop those options or drop --calibration.")  # fmt: skip
    out = _claim(args.out, "monitor", "monitor")
    model = _load_model(args)
    if args.directions is not None:
        persona, refusal = load_monitor_directions(args.directions, model)
    else:
        persona, refusal = _fit_and_save(model, args, out, "persona", "refusal")
    if args.calibration is not None:
        cal = MonitorCalibration.load(args.calibration)
    else:
        cal = calibrate(model, persona, layers=args.layers, flag_layer=args.flag_layer, seed=args.seed,
                        progress=not args.no_progress, **given)  # fmt: skip
        cal.save(out / "calibration")
    result = monitor(model, conversation, persona, refusal, layers=args.layers, calibration=cal)
    print(format_calibration(cal) + "\n")
    print(format_monitor(result, layer=args.flag_layer))
    result.save(out / "monitor")
    html = save_html(fig_monitor_timeline(result, layer=args.flag_layer), out / "timeline.html")
    saved = ("" if args.directions is not None else "persona/, refusal/, ") + ("" if args.calibration else "calibration/, ")
    print(f"\nsaved to {out}/: {saved}monitor/ (result), {html.name}")
    return 0


def dataclass_dict(obj) -> dict:
    import dataclasses

    return dataclasses.asdict(obj)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``persona-gate: error: ...``), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"persona-gate: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="persona-gate",
        description="Does this chat model's persona gate its refusal, and at which layers?",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"persona-gate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("directions", help="fit per-layer persona and refusal directions and print a summary")
    _add_model_args(d)
    d.add_argument("--layers", type=_layers, default=None, help="comma-separated layers (default: all)")
    d.add_argument("--kind", default="resid_pre", help="resid_pre (default), resid_mid or resid_post")
    d.add_argument("--refusal-position", default="last", help="position selector for refusal (default: last)")
    d.add_argument("--persona-position", default="mean:system", help="position selector for persona (default: mean:system)")
    d.add_argument("--n", type=int, default=None, help="requests per group (default: the whole train split)")
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default=None, help="folder to save the direction sets and summary.json")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.set_defaults(func=_cmd_directions)

    for name, help_text, default_out in (
        ("demo", "the whole pipeline on the bundled organism, offline, in about a minute", "runs/demo"),
        ("run", "the whole pipeline on any model (resumable: finished stages are skipped)", None),
    ):
        r = sub.add_parser(name, help=help_text)
        r.add_argument("--model", default=None, help="'organism' (default), a local folder, a .gguf file or a hub name")
        r.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
        r.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
        r.add_argument("--device-map", default=None, help="'auto': spread a model larger than one GPU over GPUs, CPU and disk")
        r.add_argument("--chat-template", default=None, help="chatml, gemma, llama3 or Jinja text")
        if name == "run":
            r.add_argument("--config", default=None, help="TOML file with RunConfig keys (see README)")
            r.add_argument("--out", default=None, help="run folder (required; re-running resumes it)")
            r.add_argument("--plan", action="store_true", help="print what the run would execute per stage and its cost; run nothing")
            r.add_argument("--flops", default=None, metavar="ACCELERATOR",
                           help="with --plan: estimate the time on A100, H100, H200, L4 or a peak FLOP/s such as 4e14")
            r.add_argument("--mfu", type=float, default=0.3, help="with --flops: the share of the peak a forward sustains (default 0.3)")
            r.add_argument("--plan-json", default=None, help="with --plan: also write the plan as JSON to this file")
        else:
            r.add_argument("--out", default=default_out, help=f"run folder (default {default_out})")
        r.add_argument("--no-progress", action="store_true", help="hide progress bars")
        r.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="write one self-contained HTML report for a result folder")
    rep.add_argument("run_dir", metavar="FOLDER", help="a folder written by run, demo, directions, redteam, monitor or compare")
    rep.add_argument("--out", default=None, help="HTML file (default FOLDER/report.html)")
    rep.set_defaults(func=_cmd_report)

    t = sub.add_parser("redteam", help="red-team refusal: direct bypass phrasings vs persona manipulation")
    _add_model_args(t)
    t.add_argument("--directions", default=None, help="persona directions: a `directions --out` folder or a saved set (default: fit them)")
    t.add_argument("--requests", default=None, help=".txt (one harmful request per line) or .json list (default: held-out harmful requests)")
    t.add_argument("--n", type=int, default=16, help="default requests to draw (default 16)")
    t.add_argument("--families", default="none,direct,persona", help="attack families, comma-separated (default: all three)")
    t.add_argument("--system", default=None, help="base system prompt the attacks run under (default: none)")
    t.add_argument("--layer", type=int, default=None, help="layer of the headline projection and AUROC (default: the middle one)")
    t.add_argument("--position", default="mean:attack", help="where the projection is read: mean:attack (default), last, mean:user ...")
    t.add_argument("--no-generate", action="store_true", help="label by the greedy first token instead of generated replies")
    t.add_argument("--max-new-tokens", type=int, default=24)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/redteam", help="output folder (default runs/redteam)")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.set_defaults(func=_cmd_redteam)

    c = sub.add_parser("compare", help="compare two checkpoints: persona/refusal direction drift and refusal change")
    c.add_argument("--model-a", default="organism", help="reference checkpoint (default: organism): a name, folder or .gguf")
    c.add_argument("--model-b", required=True, help="checkpoint to compare, e.g. a fine-tuned copy of A")
    c.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    c.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    c.add_argument("--layers", type=_layers, default=None, help="comma-separated layers (default: all)")
    c.add_argument("--n", type=int, default=48, help="requests per group for fitting directions (default 48)")
    c.add_argument("--n-eval", type=int, default=32, help="held-out prompts per group for shifts and refusal (default 32)")
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    c.add_argument("--no-progress", action="store_true", help="hide progress bars")
    c.set_defaults(func=_cmd_compare)

    m = sub.add_parser("monitor", help="persona-drift monitor: persona/refusal projection per turn of a conversation, flagged")
    _add_model_args(m)
    m.add_argument("conversation", help="JSONL file, one {\"role\", \"content\"} message per line")
    m.add_argument("--directions", default=None, help="a `persona-gate directions --out` folder (default: fit them)")
    m.add_argument("--calibration", default=None, help="a saved calibration folder (default: calibrate and save one)")
    m.add_argument("--layers", type=_layers, default=None, help="comma-separated layers (default: all)")
    m.add_argument("--flag-layer", type=int, default=None, help="layer whose threshold flags a turn (default: best on train)")
    # Calibration settings default to None here so that they can be told apart from "not given"
    # (they conflict with --calibration); calibrate() holds the defaults named in the help.
    m.add_argument("--reading", default=None, choices=("response", "start"),
                   help="flag on the reply mean (default) or the response-start token")
    m.add_argument("--target-fpr", type=float, default=None, help="threshold at this train FPR (default: max TPR - FPR)")
    m.add_argument("--n-train", type=int, default=None, help="single-turn chats per persona to set thresholds (default 32)")
    m.add_argument("--n-test", type=int, default=None, help="held-out conversations per persona for the rates (default 16)")
    m.add_argument("--turns", type=int, default=None, help="turns per held-out conversation (default 3)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", default="runs/monitor", help="output folder (default runs/monitor)")
    m.add_argument("--no-progress", action="store_true", help="hide progress bars")
    m.set_defaults(func=_cmd_monitor)

    s = sub.add_parser("screen", help="screen fine-tuning data: which examples push the persona toward compliance")
    _add_model_args(s)
    s.add_argument("data", nargs="?", default=None, metavar="DATA.jsonl",
                   help='chat examples, one {"messages": [...]} object per line, each ending with the assistant reply')
    s.add_argument("--directions", default=None, help="a `persona-gate directions --out` folder (default: fit them)")
    s.add_argument("--layers", type=_layers, default=None, help="layers the score averages (default: the second half)")
    s.add_argument("--max-tokens", type=int, default=32, help="reply tokens read per example (default 32)")
    s.add_argument("--top", type=int, default=10, help="examples listed (default 10)")
    s.add_argument("--validate", action="store_true",
                   help="also validate the score on organism fine-tunes (Spearman with the refusal drop, AUROC; minutes)")
    s.add_argument("--steps", type=int, default=40, help="--validate: fine-tuning steps per dataset (default 40)")
    s.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="--validate: fine-tuning seeds (default 0,1,2)")
    s.add_argument("--n-examples", type=int, default=640, help="--validate: examples per dataset (default 640)")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/screen", help="output folder (default runs/screen; re-running resumes)")
    s.add_argument("--no-progress", action="store_true", help="hide progress bars")
    s.set_defaults(func=_cmd_screen)

    g = sub.add_parser("guard", help="guard the gate: cap the persona projection, graded against persona attacks")
    _add_model_args(g)
    g.add_argument("--directions", default=None, help="a `persona-gate directions --out` folder (default: fit them)")
    g.add_argument("--windows", type=_windows, default=None, help="layer windows START-END, comma-separated (default: half-depth windows)")
    g.add_argument("--width", type=int, default=None, help="width of the default windows (default: half the depth)")
    g.add_argument("--percentiles", type=_percentiles, default=[50, 75, 90, 95, 99],
                   help="caps at these percentiles of safe-persona token projections (default 50,75,90,95,99)")
    g.add_argument("--readd-refusal", type=float, default=None, metavar="ALPHA",
                   help="re-add ALPHA x the refusal direction where the cap engages (default: off)")
    g.add_argument("--max-harmless-refusal", type=float, default=0.05, help="over-refusal budget of the recommendation (default 0.05)")
    g.add_argument("--max-kl", type=float, default=0.1, help="KL budget of the recommendation, nats per reply token (default 0.1)")
    g.add_argument("--n", type=int, default=32, help="held-out requests per attack and per persona (default 32)")
    g.add_argument("--no-verify", action="store_true", help="skip re-measuring the recommendation on generated replies")
    g.add_argument("--max-new-tokens", type=int, default=24)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="runs/guard", help="output folder (default runs/guard; re-running resumes by cell)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.set_defaults(func=_cmd_guard)

    o = sub.add_parser("organism", help="the bundled chat-model organism")
    organism_cli.add_subcommands(o)
    x = sub.add_parser("export", help="export edited weights, a llama.cpp control vector or plain directions")
    export_cli.add_subcommands(x, _add_model_args, _layers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # transformers/TransformerLens chatter would bury the one table a user asked for.
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `persona-gate ... | head` closed the pipe: not an error (before OSError: a subclass)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        # Finished stages and cells are on disk (atomic writes); the same command picks up from them.
        print("persona-gate: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except PersonaGateError as e:
        # Named errors carry their fix in one line; anything else is a bug and keeps its traceback.
        print(f"persona-gate: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


def run(argv: Sequence[str] | None = None) -> None:
    """The console entry point: :func:`main`, then exit with its status.

    After Ctrl-C the exit is immediate (``os._exit`` once the streams are flushed): when the
    interrupt surfaced inside library code, CPython would otherwise re-raise SIGINT at shutdown and
    the shell would see a kill (status -2) instead of 130. Every result on disk is written
    atomically, so nothing is lost by skipping the interpreter's clean-up.
    """
    code = main(argv)
    if code == 130:
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
