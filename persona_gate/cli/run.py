"""The pipeline commands: ``directions``, ``demo``, ``run`` (and ``run --plan``) and ``report``.

Thin: build a :class:`~persona_gate.experiments.pipeline.RunConfig` from the TOML file and the
flags, call the library, print the summary (:func:`~persona_gate.experiments.summary.format_run_summary`)
and where the results went.

Example::

    persona-gate demo                                        # organism, offline, seconds on a CPU
    persona-gate run --config paper/organism.toml --out runs/organism
    persona-gate run --plan --config paper/qwen2.5-7b-instruct.toml --flops H100   # no weights: plan_config
    persona-gate report runs/organism
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..prompts.positions import SPELLINGS
from .common import (
    add_config_model_args,
    add_model_args,
    add_no_progress,
    add_out,
    add_work_args,
    check_layers,
    check_out,
    claim,
    layers,
    load_model,
    passed,
    write_summary,
)


def _cmd_directions(args: argparse.Namespace) -> int:
    from ..core.contrasts import fit_persona_and_refusal, format_summary

    t0 = time.perf_counter()
    if args.out is not None:
        check_out(args.out, "directions")  # a bad --out fails before the model loads
    model = load_model(args)
    check_layers(model, *(args.layers or ()))
    if args.out is not None:  # every input checked: now the folder
        claim(args.out, "directions", "directions")
    flags = passed(args, "layers", "kind", "refusal_position", "persona_position", "batch_size", "seed")
    pr = fit_persona_and_refusal(model, n_per_group=args.n, **flags)
    print(format_summary(pr))
    if args.out is not None:
        out = Path(args.out)
        pr.refusal.save(out / "refusal")
        pr.persona.save(out / "persona")
        pr.persona_last.save(out / "persona_last")
        from ..provenance import versions

        write_summary(
            out,
            {
                "model": args.model,
                "rows": pr.rows(),
                "counts": pr.means.counts,
                "seed": args.seed,
                "versions": versions(),
                "wall_s": round(time.perf_counter() - t0, 2),
            },
            indent=1,
        )
        print(f"\nsaved directions to {out}/ (refusal, persona, persona_last, summary.json)")
    return 0


def _plan(cfg: Any, args: argparse.Namespace) -> int:
    """``run --plan``: what the run would execute, per stage, and what it would cost."""
    from ..experiments.plan import accelerator_flops, format_plan, plan_run

    if args.flops is not None:
        accelerator_flops(args.flops)  # a bad name fails before the model loads
    if args.plan_config is not None:  # relative to where the command runs
        cfg = dataclasses.replace(cfg, plan_config=str(Path(args.plan_config).expanduser().resolve()))
    # Without weights from plan_config (relative to the config file); else as the run loads it.
    model = cfg.plan_model(Path(args.config).parent if args.config else None)
    plan = plan_run(cfg, model, args.out, accelerator=args.flops, mfu=args.mfu)
    print(format_plan(plan))
    if args.plan_json:
        from ..io import atomic_write_text

        atomic_write_text(Path(args.plan_json), plan.to_json(indent=1))
    return 0


def _config(args: argparse.Namespace):
    """The run's config: DEMO (``demo``), the TOML file (``--config``) or the defaults, under the model flags."""
    from ..experiments.pipeline import DEMO, RunConfig

    overrides = {
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "device_map": args.device_map,
        "chat_template": args.chat_template,
    }
    if args.command == "demo":
        return RunConfig.from_dict(
            {**dataclasses.asdict(DEMO), **{k: v for k, v in overrides.items() if v is not None}}
        )
    if args.config is not None:
        cfg = RunConfig.from_toml(args.config, **overrides)
        if args.model is not None and cfg.plan_config is not None:  # the file's config.json is another model's
            cfg = dataclasses.replace(cfg, plan_config=None)
        return cfg
    return RunConfig.from_dict({k: v for k, v in overrides.items() if v is not None})


def _cmd_run(args: argparse.Namespace) -> int:
    from ..experiments.pipeline import run_pipeline
    from ..experiments.summary import format_run_summary

    cfg = _config(args)
    if getattr(args, "plan", False):
        return _plan(cfg, args)
    if getattr(args, "flops", None) is not None:
        raise ConfigError(
            "--flops estimates the cost plan's time; add --plan (persona-gate run --plan --flops H100 ...)."
        )
    if getattr(args, "plan_config", None) is not None:
        raise ConfigError(
            "--plan-config plans a run without its weights; add --plan (persona-gate run --plan --plan-config ...)."
        )
    if args.out is None:
        raise ConfigError(
            "persona-gate run needs --out (the run folder; re-running resumes it), or --plan to only plan."
        )
    from ..grid import from_environment

    out = Path(args.out)
    workers = from_environment()
    summary = run_pipeline(cfg, out, progress=not args.no_progress and workers.lead)
    if not workers.lead:
        return 0  # process 0 reports for all
    print(format_run_summary(summary, out))
    from ..plots.report import write_report

    print(f"report: {write_report(out)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ..plots.report import write_report

    print(f"report written to {write_report(args.run_dir, args.out)}")
    return 0


def add_directions_command(sub) -> None:
    d = sub.add_parser(
        "directions",
        help="fit per-layer persona and refusal directions and print a summary",
        description="Fit the refusal direction (harmful minus harmless requests) and the persona direction "
        "(compliant minus safe system prompts) at every layer and print their norms and cosines per layer. "
        "With --out, save the direction sets (refusal, persona, persona_last) and summary.json, for the "
        "--directions of the other commands. The verdict (does the persona gate refusal?) is `persona-gate demo`.",
    )
    add_model_args(d)
    d.add_argument(
        "--layers", type=layers, default=None, help="comma-separated layers, 0-based, -1 the last (default: all)"
    )
    d.add_argument("--kind", default="resid_pre", help="resid_pre (default), resid_mid or resid_post")
    d.add_argument(
        "--refusal-position",
        default="last",
        help=f"token position the refusal direction is read at: {SPELLINGS} (default: last)",
    )
    d.add_argument(
        "--persona-position",
        default="mean:system",
        help=f"token position the persona direction is read at: {SPELLINGS} (default: mean:system)",
    )
    d.add_argument("--n", type=int, default=None, help="requests per group (default: the whole train split)")
    add_work_args(d, None, batch_size=16, out_help="folder to save the direction sets and summary.json")
    d.set_defaults(func=_cmd_directions)


def add_run_commands(sub) -> None:
    """``demo`` and ``run``: the whole pipeline; ``run --plan`` only plans it."""
    r = sub.add_parser(
        "demo",
        help="the whole pipeline on the bundled organism, offline, in seconds on a CPU",
        description="Run the whole pipeline (directions, persona steering, refusal re-introduction, window "
        "projection, activation patching) on the bundled organism, offline, in seconds on a CPU, and print "
        "the verdict: does the persona gate refusal, and at which layers. Writes the run folder (summary.json, "
        "one folder per stage) and report.html; the same command again resumes.",
    )
    add_config_model_args(r)
    add_out(r, "runs/demo", "run folder (default runs/demo)")
    add_no_progress(r)
    r.set_defaults(func=_cmd_run)

    r = sub.add_parser(
        "run",
        help="the whole pipeline on any model (resumable: finished stages are skipped)",
        description="Run the whole pipeline on any chat model: the config file's RunConfig keys (--config), "
        "overridden by the model flags. Finished stages in --out are skipped, so the same command resumes a "
        "killed run. --plan prints what would run per stage and what it would cost, and runs nothing.",
    )
    add_config_model_args(r)
    r.add_argument("--config", default=None, help="TOML file with RunConfig keys (see README)")
    add_out(r, None, "run folder (required; re-running resumes it)")
    r.add_argument(
        "--plan", action="store_true", help="print what the run would execute per stage and its cost; run nothing"
    )
    r.add_argument(
        "--flops",
        default=None,
        metavar="ACCELERATOR",
        help="with --plan: estimate the time on A100, H100, H200, L4 or a peak FLOP/s such as 4e14",
    )
    r.add_argument(
        "--mfu", type=float, default=0.3, help="with --flops: the share of the peak a forward sustains (default 0.3)"
    )
    r.add_argument("--plan-json", default=None, help="with --plan: also write the plan as JSON to this file")
    r.add_argument(
        "--plan-config",
        default=None,
        metavar="CONFIG_JSON",
        help="with --plan: plan without loading weights, from this config.json or model folder (overrides plan_config)",
    )
    add_no_progress(r)
    r.set_defaults(func=_cmd_run)


def add_report_command(sub) -> None:
    rep = sub.add_parser(
        "report",
        help="write one self-contained HTML report for a result folder",
        description="Write one self-contained HTML report (figures and tables, no network needed to view it) "
        "for a folder written by run, demo, directions, redteam, monitor or compare.",
    )
    rep.add_argument(
        "run_dir", metavar="FOLDER", help="a folder written by run, demo, directions, redteam, monitor or compare"
    )
    add_out(rep, None, "HTML file (default FOLDER/report.html)")
    rep.set_defaults(func=_cmd_report)
