"""The defence commands: ``screen`` (fine-tuning data, before training) and ``guard`` (the gate, at inference).

Thin: check the inputs, claim the folder, fit or read the directions, call
:func:`~persona_gate.screening.screen.screen` or :func:`~persona_gate.guard.grid.guard_grid`,
print their ``format_*`` text, save and say where.

Example::

    persona-gate screen data.jsonl --out runs/screen
    persona-gate screen --validate --out runs/screen-check
    persona-gate guard --windows 3-5,2-6 --out runs/guard
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import (
    add_directions,
    add_model_args,
    add_work_args,
    check_layers,
    check_out,
    claim,
    layers,
    load_model,
    passed,
    percentiles,
    persona_and_refusal,
    seeds,
    windows,
    write_summary,
)


def _validate(args: argparse.Namespace, out):
    """``screen --validate``: the score checked on organism fine-tunes, printed (None without the flag)."""
    if not args.validate:
        return None
    from ..screening.summary import format_validation
    from ..screening.validation import validate_screening

    validation = validate_screening(
        out / "validation",
        base=args.model,
        steps=args.steps,
        seeds=args.seeds,
        n_examples=args.n_examples,
        progress=not args.no_progress,
    )
    print(format_validation(validation))
    return validation.to_dict()  # embedded in summary.json as its JSON form


def _cmd_screen(args: argparse.Namespace) -> int:
    from ..plots import fig_screening, save_html
    from ..screening.data import read_chat_jsonl
    from ..screening.screen import screen
    from ..screening.summary import format_screening, screening_summary

    if args.data is None and not args.validate:
        raise ConfigError('pass the fine-tuning data (DATA.jsonl, one {"messages": [...]} per line), or --validate.')
    examples = read_chat_jsonl(args.data) if args.data is not None else None  # a malformed line fails before any work
    check_out(args.out, "screen")
    model = load_model(args) if examples is not None else None
    if model is not None:  # the inputs that need the model, before the folder is made
        check_layers(model, *(args.layers or ()))
        if args.directions is not None:
            persona_and_refusal(model, args, Path(args.out), False)
    out = claim(args.out, "screen", "screen")
    validation = _validate(args, out)
    saved = []
    if examples is not None:
        persona, _ = persona_and_refusal(model, args, out, False)
        flags = passed(args, "layers", "max_tokens", "batch_size")
        res = screen(model, persona, examples, checkpoint=out / "screening.cells", **flags)
        print(("\n" if validation else "") + format_screening(res, k=args.top))
        res.save(out / "screening")
        saved += ["screening/", save_html(fig_screening(res), out / "screening.html").name]
        summary = screening_summary(res, validation)
        summary["data"] = str(args.data)
    else:
        summary = {"dataset_score": None, "spearman": validation["spearman"], "validation": validation}  # type: ignore[index]
    write_summary(out, summary)
    print(f"\nsaved to {out}/: {', '.join(saved + (['validation/'] if validation else []) + ['summary.json'])}")
    return 0


# guard_grid's keywords that the guard command passes on as parsed
_GUARD_FLAGS = (
    "windows",
    "width",
    "percentiles",
    "n",
    "seed",
    "max_harmless_refusal",
    "max_kl",
    "max_new_tokens",
    "batch_size",
)


def _cmd_guard(args: argparse.Namespace) -> int:
    from ..guard.grid import GuardGridConfig, check_grid_settings, guard_grid
    from ..guard.summary import format_guard, guard_summary
    from ..plots import fig_guard_grid, save_html

    check_out(args.out, "guard")
    model = load_model(args)
    flags = passed(args, *_GUARD_FLAGS)
    settings = {k: v for k, v in flags.items() if k != "progress"}
    # Windows, width, percentiles and budgets against the model's depth, and a given --directions:
    # checked before any direction is fitted or the folder is made.
    check_grid_settings(int(model.cfg.n_layers), GuardGridConfig(**settings))
    if args.directions is not None:
        persona_and_refusal(model, args, Path(args.out), bool(args.readd_refusal))
    out = claim(args.out, "guard", "guard")
    persona, refusal = persona_and_refusal(model, args, out, bool(args.readd_refusal))
    alpha, verify = args.readd_refusal or 0.0, not args.no_verify
    res = guard_grid(model, persona, refusal, alpha=alpha, verify=verify, checkpoint=out / "guard.cells", **flags)
    print(format_guard(res))
    res.save(out / "guard_grid")
    html = save_html(fig_guard_grid(res), out / "guard.html")
    write_summary(out, guard_summary(res))
    print(f"\nsaved to {out}/: guard_grid/, {html.name}, summary.json")
    return 0


def add_screen_command(sub) -> None:
    s = sub.add_parser(
        "screen",
        help="screen fine-tuning data: which examples push the persona toward compliance",
        description="Screen fine-tuning data before training: score every chat example by how far its reply "
        "moves the persona direction toward the compliant persona, list the highest and give the dataset's "
        "score. --validate checks the score on organism fine-tunes (minutes). Re-running resumes.",
    )
    add_model_args(s)
    s.add_argument(
        "data",
        nargs="?",
        default=None,
        metavar="DATA.jsonl",
        help='chat examples, one {"messages": [...]} object per line, each ending with the assistant reply',
    )
    add_directions(s)
    s.add_argument("--layers", type=layers, default=None, help="layers the score averages (default: the second half)")
    s.add_argument("--max-tokens", type=int, default=32, help="reply tokens read per example (default 32)")
    s.add_argument("--top", type=int, default=10, help="examples listed (default 10)")
    s.add_argument(
        "--validate",
        action="store_true",
        help="also validate the score on organism fine-tunes (Spearman with the refusal drop, AUROC; minutes)",
    )
    s.add_argument("--steps", type=int, default=40, help="--validate: fine-tuning steps per dataset (default 40)")
    s.add_argument("--seeds", type=seeds, default=[0, 1, 2], help="--validate: fine-tuning seeds (default 0,1,2)")
    s.add_argument("--n-examples", type=int, default=640, help="--validate: examples per dataset (default 640)")
    add_work_args(s, "runs/screen", batch_size=32, out_help="output folder (default runs/screen; re-running resumes)")
    s.set_defaults(func=_cmd_screen)


def add_guard_command(sub) -> None:
    g = sub.add_parser(
        "guard",
        help="guard the gate: cap the persona projection, graded against persona attacks",
        description="Guard the gate at inference: cap the persona projection inside layer windows at "
        "percentiles of safe-persona projections, grade each setting on persona attacks, harmless "
        "over-refusal and KL, and recommend one. Saves the grid, an HTML figure and summary.json; "
        "re-running resumes by cell.",
    )
    add_model_args(g)
    add_directions(g)
    g.add_argument(
        "--windows",
        type=windows,
        default=None,
        help="layer windows START-END, comma-separated (default: half-depth windows)",
    )
    g.add_argument("--width", type=int, default=None, help="width of the default windows (default: half the depth)")
    g.add_argument(
        "--percentiles",
        type=percentiles,
        default=[50, 75, 90, 95, 99],
        help="caps at these percentiles of safe-persona token projections (default 50,75,90,95,99)",
    )
    g.add_argument(
        "--readd-refusal",
        type=float,
        default=None,
        metavar="ALPHA",
        help="re-add ALPHA x the refusal direction where the cap engages (default: off)",
    )
    g.add_argument(
        "--max-harmless-refusal",
        type=float,
        default=0.05,
        help="over-refusal budget of the recommendation (default 0.05)",
    )
    g.add_argument(
        "--max-kl", type=float, default=0.1, help="KL budget of the recommendation, nats per reply token (default 0.1)"
    )
    g.add_argument("--n", type=int, default=32, help="held-out requests per attack and per persona (default 32)")
    g.add_argument("--no-verify", action="store_true", help="skip re-measuring the recommendation on generated replies")
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=24,
        help="reply tokens generated to verify the recommendation (default 24)",
    )
    add_work_args(
        g, "runs/guard", batch_size=32, out_help="output folder (default runs/guard; re-running resumes by cell)"
    )
    g.set_defaults(func=_cmd_guard)
