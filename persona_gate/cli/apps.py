"""The application commands: ``monitor`` (persona drift per turn), ``redteam`` and ``compare`` (two checkpoints).

Thin: check the inputs before minutes of work, claim the folder, fit or read the directions,
call the application's one entry point, print its table, save and say where.

Example::

    persona-gate monitor chat.jsonl --out runs/monitor
    persona-gate redteam --families none,persona --n 16 --out runs/redteam
    persona-gate compare --model-b runs/compliant --out runs/compare
"""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..prompts.positions import SPELLINGS
from .common import (
    add_directions,
    add_dtype_and_device,
    add_model_args,
    add_work_args,
    check_layers,
    check_out,
    claim,
    fit_and_save,
    layers,
    load_model,
    passed,
)

# monitor's calibration settings, by calibrate()'s keyword, and the flag that sets each.
_CALIBRATION_FLAGS = {
    "n_train": "--n-train",
    "n_test": "--n-test",
    "test_turns": "--turns",
    "target_fpr": "--target-fpr",
    "flag_reading": "--reading",
}


def _calibration_settings(args: argparse.Namespace) -> dict:
    """The calibration settings given on the command line; with --calibration any of them is an error."""
    settings = {
        "n_train": args.n_train,
        "n_test": args.n_test,
        "test_turns": args.turns,
        "target_fpr": args.target_fpr,
        "flag_reading": args.reading,
    }
    given = {k: v for k, v in settings.items() if v is not None}
    if args.calibration is not None and given:
        raise ConfigError(
            f"{', '.join(_CALIBRATION_FLAGS[k] for k in given)} set how a calibration is made, and --calibration loads a "
            "finished one; drop those options or drop --calibration."
        )
    return given


def _cmd_monitor(args: argparse.Namespace) -> int:
    from ..monitoring.calibration import MonitorCalibration, calibrate, format_calibration
    from ..monitoring.monitor import load_monitor_directions, monitor
    from ..monitoring.readings import as_conversation
    from ..monitoring.summary import format_monitor
    from ..plots import fig_monitor_timeline, save_html

    # Bad input fails before minutes of fitting and calibrating, and before the folder is made.
    conversation = as_conversation(args.conversation)
    given = _calibration_settings(args)
    check_out(args.out, "monitor")
    model = load_model(args)
    check_layers(model, *(args.layers or ()), args.flag_layer)
    given_dirs = load_monitor_directions(args.directions, model) if args.directions is not None else None
    cal = MonitorCalibration.load(args.calibration) if args.calibration is not None else None
    out = claim(args.out, "monitor", "monitor")
    persona, refusal = given_dirs or fit_and_save(model, args, out, "persona", "refusal")
    if cal is None:
        cal = calibrate(model, persona, **passed(args, "layers", "flag_layer", "seed"), **given)
        cal.save(out / "calibration")
    result = monitor(model, conversation, persona, refusal, layers=args.layers, calibration=cal)
    print(format_calibration(cal) + "\n")
    print(format_monitor(result, layer=args.flag_layer))
    result.save(out / "monitor")
    html = save_html(fig_monitor_timeline(result, layer=args.flag_layer), out / "timeline.html")
    saved = ("" if args.directions is not None else "persona/, refusal/, ") + (
        "" if args.calibration else "calibration/, "
    )
    print(f"\nsaved to {out}/: {saved}monitor/ (result), {html.name}")
    return 0


def _cmd_redteam(args: argparse.Namespace) -> int:
    from ..plots import fig_red_team, save_html
    from ..redteam.harness import load_persona_directions, read_requests, red_team

    requests = read_requests(args.requests) if args.requests is not None else None  # bad input fails before any work
    check_out(args.out, "redteam")
    model = load_model(args)
    check_layers(model, args.layer)
    persona = load_persona_directions(args.directions, model) if args.directions is not None else None
    out = claim(args.out, "redteam", "redteam")  # every input checked: now the folder
    if persona is None:
        (persona,) = fit_and_save(model, args, out, "persona")
    rt = red_team(
        model,
        persona,
        requests,
        families=[f.strip() for f in args.families.split(",") if f.strip()],
        generate_labels=not args.no_generate,
        **passed(args, "system", "layer", "position", "n", "max_new_tokens", "batch_size", "seed"),
    )
    print(rt.format_table())
    rt.save(out / "red_team")
    html = save_html(fig_red_team(rt), out / "red_team.html")
    fitted = "" if args.directions is not None else "persona/ (fitted directions), "
    print(f"\nsaved to {out}/: {fitted}red_team/ (scores, projections, summary.json), {html.name}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..compare.checkpoints import compare_checkpoints
    from ..compare.summary import format_comparison, refusal_change
    from ..plots.compare_report import write_comparison_report

    check_out(args.out, "comparison")  # the folder is made once the comparison (which checks its inputs) is done
    flags = passed(args, "layers", "n_eval", "seed", "batch_size", "dtype", "device")
    result = compare_checkpoints(args.model_a, args.model_b, n_per_group=args.n, **flags)
    out = claim(args.out, "comparison", "compare")
    print(format_comparison(result))
    change = refusal_change(result)["safe/harmful"]
    print(f"\nrefusal of safe-persona harmful requests changed by {change:+.2f} (B - A)")
    result.save(out / "comparison")
    report = write_comparison_report(result, out / "report.html")
    print(f"saved to {out}/: comparison/ (result), {report.name}")
    return 0


def add_monitor_command(sub) -> None:
    m = sub.add_parser(
        "monitor",
        help="persona-drift monitor: persona/refusal projection per turn of a conversation, flagged",
        description="Monitor persona drift over a conversation: the persona and refusal projections of every "
        "turn, flagged where the persona projection crosses a threshold calibrated on held-out chats (or read "
        "from --calibration). Saves the result, the calibration and an HTML timeline.",
    )
    add_model_args(m)
    m.add_argument("conversation", help='JSONL file, one {"role", "content"} message per line')
    add_directions(m)
    m.add_argument("--calibration", default=None, help="a saved calibration folder (default: calibrate and save one)")
    m.add_argument(
        "--layers", type=layers, default=None, help="comma-separated layers, 0-based, -1 the last (default: all)"
    )
    m.add_argument(
        "--flag-layer", type=int, default=None, help="layer whose threshold flags a turn (default: best on train)"
    )
    # Calibration settings default to None here so that they can be told apart from "not given"
    # (they conflict with --calibration); calibrate() holds the defaults named in the help.
    m.add_argument(
        "--reading",
        default=None,
        choices=("response", "start"),
        help="flag on the reply mean (default) or the response-start token",
    )
    m.add_argument(
        "--target-fpr", type=float, default=None, help="threshold at this train FPR (default: max TPR - FPR)"
    )
    m.add_argument(
        "--n-train", type=int, default=None, help="single-turn chats per persona to set thresholds (default 32)"
    )
    m.add_argument(
        "--n-test", type=int, default=None, help="held-out conversations per persona for the rates (default 16)"
    )
    m.add_argument("--turns", type=int, default=None, help="turns per held-out conversation (default 3)")
    add_work_args(m, "runs/monitor")
    m.set_defaults(func=_cmd_monitor)


def add_redteam_command(sub) -> None:
    t = sub.add_parser(
        "redteam",
        help="red-team refusal: direct bypass phrasings vs persona manipulation",
        description="Red-team refusal: harmful requests with no attack, with direct bypass phrasings and with "
        "persona manipulation, scored by refusal rate and by their projection on the persona direction (with "
        "the AUROC that projection gets at telling the attacks apart). Saves the scores and an HTML figure.",
    )
    add_model_args(t)
    add_directions(t, "persona directions: a `directions --out` folder or a saved set (default: fit them)")
    t.add_argument(
        "--requests",
        default=None,
        help=".txt (one harmful request per line) or .json list (default: held-out harmful requests)",
    )
    t.add_argument("--n", type=int, default=16, help="default requests to draw (default 16)")
    t.add_argument(
        "--families", default="none,direct,persona", help="attack families, comma-separated (default: all three)"
    )
    t.add_argument("--system", default=None, help="base system prompt the attacks run under (default: none)")
    t.add_argument(
        "--layer", type=int, default=None, help="layer of the headline projection and AUROC (default: the middle one)"
    )
    t.add_argument(
        "--position",
        default="mean:attack",
        help=f"where the projection is read: mean:attack (the attack's text; default), {SPELLINGS}",
    )
    t.add_argument(
        "--no-generate", action="store_true", help="label by the greedy first token instead of generated replies"
    )
    t.add_argument(
        "--max-new-tokens", type=int, default=24, help="reply tokens generated to label each reply (default 24)"
    )
    add_work_args(t, "runs/redteam", batch_size=32)
    t.set_defaults(func=_cmd_redteam)


def add_compare_command(sub) -> None:
    c = sub.add_parser(
        "compare",
        help="compare two checkpoints: persona/refusal direction drift and refusal change",
        description="Compare two checkpoints of one model (a model and its fine-tune, say) on the same prompts: "
        "how far the persona and refusal directions moved at each layer, and how refusal changed. Saves the "
        "comparison and an HTML report.",
    )
    c.add_argument(
        "--model-a", default="organism", help="reference checkpoint (default: organism): a name, folder or .gguf"
    )
    c.add_argument("--model-b", required=True, help="checkpoint to compare, e.g. a fine-tuned copy of A")
    add_dtype_and_device(c)
    c.add_argument(
        "--layers", type=layers, default=None, help="comma-separated layers, 0-based, -1 the last (default: all)"
    )
    c.add_argument("--n", type=int, default=48, help="requests per group for fitting directions (default 48)")
    c.add_argument(
        "--n-eval", type=int, default=32, help="held-out prompts per group for shifts and refusal (default 32)"
    )
    add_work_args(c, "runs/compare", batch_size=16)
    c.set_defaults(func=_cmd_compare)
