"""The ``persona-gate export`` subcommands: ``model``, ``control-vector`` and ``directions``.

Thin: parse, check the inputs, call one function of :mod:`persona_gate.export`, print where.

Example::

    persona-gate directions --out runs/dirs
    persona-gate export model --directions runs/dirs --ablate refusal --source-layer 3 --out runs/no-refusal
    persona-gate export model --directions runs/dirs --ablate refusal --source-layer 3 --layers 0,1,2 --out runs/window
    persona-gate export model --directions runs/dirs --steer persona --alpha 4 --layers 2 --out runs/steered
    persona-gate export control-vector --directions runs/dirs --alpha 4 --layers 3 --out persona.gguf
    persona-gate export directions --directions runs/dirs --out persona.safetensors
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .common import load_model

SETS = ("persona", "refusal", "persona_last")


def _direction_set(folder: Path, name: str, model=None):
    """``folder/name`` of a `persona-gate directions --out` folder, or ``folder`` itself when it is one set."""
    from ..core.directions import DirectionSet
    from ..errors import ArtefactError
    from ..io import folder_kind

    if folder_kind(folder) == "result:direction_set":
        return DirectionSet.load(folder, model=model)
    if not (folder / name).is_dir():
        raise ArtefactError(
            f"{folder} holds no {name!r} direction set; pass a folder written by "
            f"`persona-gate directions --out {folder}` (it holds {', '.join(SETS)})."
        )
    return DirectionSet.load(folder / name, model=model)


def _chosen(args: argparse.Namespace, model=None):
    """The direction set a command exports from ``--directions``: ``--set``, or the one ``--ablate`` / ``--steer`` names."""
    name = args.set if "set" in vars(args) else args.ablate or args.steer
    return _direction_set(args.directions, name, model)


def _done(message: str) -> int:
    """Say what the command wrote; its exit status."""
    print(message)
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    from ..core.interventions import Ablate, Steer
    from ..errors import ConfigError
    from ..export import export_model
    from ..io import check_claimable

    if (args.ablate is None) == (args.steer is None):
        raise ConfigError("pass exactly one of --ablate persona|refusal or --steer persona|refusal.")
    if args.steer is not None and (args.alpha is None or not args.layers):
        raise ConfigError("--steer needs --alpha and --layers (e.g. --alpha 4 --layers 2).")
    if args.steer is not None and args.through_last_block is not None:
        raise ConfigError(
            "--through-last-block / --no-through-last-block choose the form of --ablate; drop it with --steer."
        )
    existed = args.out.exists()
    check_claimable(args.out, "export")  # a bad --out fails before the model loads; export_model makes it, checks done
    try:
        model = load_model(args)
        direction = _chosen(args, model)
        if args.ablate is not None:
            layers = args.layers or list(range(int(model.cfg.n_layers)))
            spec = Ablate(direction, layers=layers, source_layer=args.source_layer)
        else:
            spec = Steer(direction, alpha=args.alpha, layers=args.layers, units=args.units, scope="both")
        options = dict(allow_other_model=args.allow_other_model, through_last_block=args.through_last_block)
        out = export_model(model, spec, args.out, **options)
    except BaseException:
        if not existed:  # leave no empty folder behind for an export that never happened
            shutil.rmtree(args.out, ignore_errors=True)
        raise
    edit = f"the {args.ablate} direction ablated" if args.ablate else f"{args.steer} steering"
    if args.ablate:
        edit += f" ({_export_record(out)['intervention']['form']})"
    return _done(
        f"exported {args.model} with {edit} to {out} (loads with transformers.AutoModelForCausalLM.from_pretrained; "
        f"what was edited: {out}/persona_gate_export.json)"
    )


def _export_record(out: Path) -> dict:
    """The ``persona_gate_export.json`` an export wrote (read back, so the message says what the file says)."""
    import json

    from ..export import EXPORT_FILE

    return json.loads((out / EXPORT_FILE).read_text(encoding="utf-8"))


def _cmd_control_vector(args: argparse.Namespace) -> int:
    from gguf import GGUFReader

    from ..export import export_control_vector

    options = dict(alpha=args.alpha, layers=args.layers, units=args.units, model_hint=args.model_hint)
    path = export_control_vector(_chosen(args), args.out, **options)
    names = [t.name for t in GGUFReader(str(path)).tensors]
    return _done(
        f"control vector written to {path}: {', '.join(names)} (llama.cpp's direction.k lands in persona_gate's "
        f"resid_pre.k+1), alpha {args.alpha:g} in {args.units} units"
    )


def _cmd_directions(args: argparse.Namespace) -> int:
    direction = _chosen(args)
    path = direction.export(args.out)
    return _done(f"directions written to {path} and {path.with_suffix('.json')} ({len(direction.layers)} layers)")


def _add_directions(p: argparse.ArgumentParser, with_set: bool = False) -> None:
    """``--directions`` (required here), and with ``with_set`` the ``--set`` to take from it."""
    p.add_argument("--directions", required=True, type=Path, help="a folder written by `persona-gate directions --out`")
    if with_set:
        p.add_argument("--set", choices=SETS, default="persona", help="which direction set (default persona)")


def add_subcommands(parser: argparse.ArgumentParser, add_model_args, layers_type) -> None:
    """Mount ``model``, ``control-vector`` and ``directions`` under ``persona-gate export``."""
    sub = parser.add_subparsers(dest="export_command", required=True)
    m = sub.add_parser(
        "model",
        help="bake an ablation or steering into a plain Hugging Face folder",
        description="Bake an ablation (--ablate: the direction projected out of the weights) or a steering "
        "(--steer: the direction added as a bias) into a plain Hugging Face folder that loads with "
        "transformers alone; what was edited is recorded in persona_gate_export.json.",
    )
    add_model_args(m)
    _add_directions(m)
    m.add_argument(
        "--ablate", choices=("persona", "refusal"), default=None, help="project this direction out of the weights"
    )
    m.add_argument("--steer", choices=("persona", "refusal"), default=None, help="add this direction as a bias")
    m.add_argument("--alpha", type=float, default=None, help="with --steer: strength (raw-norm units by default)")
    m.add_argument(
        "--units",
        choices=("raw", "unit"),
        default="raw",
        help="alpha in mean differences (raw, default) or unit lengths",
    )
    m.add_argument(
        "--layers",
        type=layers_type,
        default=None,
        help="with --ablate: 0..b as a list (default every layer, through the last block); with --steer: the layers to steer",
    )
    m.add_argument(
        "--source-layer", type=int, default=None, help="with --ablate: whose direction to project out at every layer"
    )
    m.add_argument(
        "--through-last-block",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --ablate over layers 0..b: also edit block b's own writes, so the direction is gone through "
        "resid_post.b (with every layer: every write, Arditi et al.'s orthogonalisation). Default: on when the "
        "ablation reaches the last layer, off for a shorter window (--no-through-last-block: the window form, "
        "block b's writes left alone)",
    )
    m.add_argument(
        "--allow-other-model", action="store_true", help="accept directions fitted on a model of another name"
    )
    m.add_argument("--out", required=True, type=Path, help="the folder to write")
    m.set_defaults(func=_cmd_model)
    c = sub.add_parser(
        "control-vector",
        help="a direction set as a llama.cpp control-vector GGUF",
        description="Write a direction set as a llama.cpp control-vector GGUF (for --control-vector), scaled "
        "by --alpha; llama.cpp's direction.k is persona_gate's resid_pre at layer k+1.",
    )
    _add_directions(c, with_set=True)
    c.add_argument(
        "--alpha", type=float, default=1.0, help="strength (default 1: one mean difference with --units raw)"
    )
    c.add_argument("--units", choices=("raw", "unit"), default="raw", help="raw (default) or unit")
    c.add_argument("--layers", type=layers_type, default=None, help="persona_gate layers >= 2 (default: all of them)")
    c.add_argument("--model-hint", default=None, help="llama.cpp's model hint (default: the directions' model)")
    c.add_argument("--out", required=True, type=Path, help="the .gguf file to write")
    c.set_defaults(func=_cmd_control_vector)
    d = sub.add_parser(
        "directions",
        help="a direction set as one safetensors file and a JSON sidecar",
        description="Write a direction set as one plain safetensors file (one vector per layer) and a JSON "
        "sidecar saying what each tensor is, for tools other than persona_gate.",
    )
    _add_directions(d, with_set=True)
    d.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    d.set_defaults(func=_cmd_directions)
