"""What every ``persona-gate`` command shares: its flags, declared once, and the steps around a call.

The flags that recur (the model flags, ``--batch-size``, ``--seed``, ``--out``, ``--no-progress``,
``--directions``) are added by the functions here, so a command names which it takes and its own
defaults, and each flag keeps one spelling and one help text. The helpers claim the output folder
before any work, load the model, fit or read the standard directions and write ``summary.json``.
Nothing here imports torch until a command runs. A command that fails before it wrote anything
creates no folder: it checks ``--out`` (:func:`check_out`) before the model loads, the inputs that
need the model next, and claims the folder (:func:`claim`) only then. Should a command fail after
that, before it wrote a result, :class:`Parser` wraps every command in :func:`tidy_out_on_failure`,
which removes an ``--out`` folder the command created and left empty (the mark of :func:`claim` aside).

Example::

    p = sub.add_parser("guard", help="...")
    add_model_args(p)
    add_directions(p)
    add_work_args(p, out="runs/guard", batch_size=32)
    args = p.parse_args([])                      # args.model == "organism", args.seed == 0
    passed(args, "seed", "batch_size")           # {"seed": 0, "batch_size": 32, "progress": True}
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL_HELP = "'organism' (default), a local folder, a .gguf file or a hub name"
DIRECTIONS_HELP = "a `persona-gate directions --out` folder (default: fit them)"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``persona-gate: error: ...``), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"persona-gate: error: {message} (see `{self.prog} --help`)\n")

    def set_defaults(self, **kwargs: Any) -> None:
        """As argparse's; a command (``func``) is wrapped in :func:`tidy_out_on_failure`."""
        if callable(kwargs.get("func")):
            kwargs["func"] = tidy_out_on_failure(kwargs["func"])
        super().set_defaults(**kwargs)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (``path`` itself included) that does not exist yet, or None."""
    top = None
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            break
        top = p
    return top


def _holds_nothing(folder: Path) -> bool:
    """Only hidden entries (the folder mark, this package's temporaries): no result was written."""
    return folder.is_dir() and not folder.is_symlink() and all(p.name.startswith(".") for p in folder.iterdir())


def tidy_out_on_failure(func: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], Any]:
    """``func``, except that when it raises, an ``--out`` folder it created and wrote no result into is
    removed again (with the parent folders it created): a command that failed validation (a layer
    the model lacks, a bad window, an unreadable directions folder) leaves nothing behind."""
    if getattr(func, "tidies_out", False):
        return func

    @functools.wraps(func)
    def command(args: argparse.Namespace) -> Any:
        out = getattr(args, "out", None)
        top = _first_missing(Path(out)) if out is not None and str(out).strip() else None
        try:
            return func(args)
        except Exception:
            if top is not None and _holds_nothing(Path(out)):
                shutil.rmtree(out, ignore_errors=True)
            if top is not None and not Path(out).exists():
                for p in Path(out).parents:  # the parents it created, while they are empty
                    if not (p == top or top in p.parents) or not p.is_dir() or any(p.iterdir()):
                        break
                    p.rmdir()
            raise

    command.tidies_out = True  # type: ignore[attr-defined]
    return command


# ---- flag types ---------------------------------------------------------------------------------


def number_list(text: str, flag: str, convert, kind: str, example: str, noun: str, hint: str = "") -> list:
    """Comma-separated numbers of one option; an empty entry, a bad one or none at all is a one-line usage error."""
    parts = text.split(",")
    if len(parts) > 1 and any(not x.strip() for x in parts):
        raise argparse.ArgumentTypeError(
            f"{flag} has an empty entry in {text!r}; write comma-separated {kind} such as {example}"
        )
    try:
        values = [convert(x) for x in parts if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} takes comma-separated {kind}, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{flag} got no {noun}; pass comma-separated {kind} such as {example}{hint}")
    return values


def layers(text: str) -> list[int]:
    return number_list(text, "--layers", int, "integers", "4,8,12", "layer", " (or omit it for all)")


def seeds(text: str) -> list[int]:
    return number_list(text, "--seeds", int, "integers", "0,1,2", "seed")


def percentiles(text: str) -> list[float]:
    return number_list(text, "--percentiles", float, "numbers", "50,75,90", "number")


def windows(text: str) -> list[tuple[int, int]]:
    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            a, b = (int(x) for x in part.split("-")) if "-" in part else (int(part), int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--windows takes comma-separated START-END spans such as 3-5,2-6, got {text!r}"
            ) from None
        out.append((a, b))
    return out


# ---- shared flags -------------------------------------------------------------------------------


def add_dtype_and_device(p: argparse.ArgumentParser, dtype: str | None = "float32") -> None:
    """``--dtype`` (``None``: the config decides, float32 unless it says otherwise) and ``--device``."""
    default = "float32 (default)" if dtype is not None else "float32 (default, unless the config says otherwise)"
    p.add_argument("--dtype", default=dtype, help=f"{default}, bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: cuda if available, else cpu)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype``, ``--device``, ``--chat-template``, with the loader's defaults."""
    p.add_argument("--model", default="organism", help=MODEL_HELP)
    add_dtype_and_device(p)
    p.add_argument(
        "--chat-template", default=None, help="chatml, gemma, llama3 or Jinja text, for tokenizers without one"
    )


def add_config_model_args(p: argparse.ArgumentParser) -> None:
    """The model flags of ``run`` and ``demo``: ``None`` defaults, so that the config decides, and ``--device-map``."""
    p.add_argument("--model", default=None, help=MODEL_HELP)
    add_dtype_and_device(p, dtype=None)
    p.add_argument(
        "--device-map", default=None, help="'auto': spread a model larger than one GPU over GPUs, CPU and disk"
    )
    p.add_argument("--chat-template", default=None, help="chatml, gemma, llama3 or Jinja text")


def add_directions(p: argparse.ArgumentParser, help: str = DIRECTIONS_HELP) -> None:
    p.add_argument("--directions", default=None, help=help)


def add_out(p: argparse.ArgumentParser, default: str | None, help: str | None = None) -> None:
    p.add_argument("--out", default=default, help=help or f"output folder (default {default})")


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_work_args(
    p: argparse.ArgumentParser, out: str | None, *, batch_size: int | None = None, out_help: str | None = None
) -> None:
    """The trailing flags of a command that works: ``[--batch-size] --seed --out --no-progress``."""
    if batch_size is not None:
        p.add_argument(
            "--batch-size",
            type=int,
            default=batch_size,
            help=f"prompts per forward pass, a positive integer (default {batch_size}); lower it if memory runs out",
        )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the prompt sampling and splits, any integer (default 0)"
    )
    add_out(p, out, out_help)
    add_no_progress(p)


# ---- the steps around a call ------------------------------------------------------------------


def passed(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags ``names`` (by dest, e.g. ``"batch_size"``), as the keyword arguments of the same names
    that a command passes on, and ``progress``, which ``--no-progress`` turns off."""
    return {name: getattr(args, name) for name in names} | {"progress": not args.no_progress}


def check_out(out: str | Path, kind: str) -> Path:
    """The output folder, checked as :func:`claim` checks it but not created: a command calls this before
    it loads the model, checks the inputs that need the model, and only then claims the folder."""
    from ..io import check_claimable

    return check_claimable(out, kind)


def claim(out: str | Path, kind: str, command: str) -> Path:
    """The output folder, checked (new, empty or this command's own kind), created and marked; after
    the inputs are checked (:func:`check_out` first), before any work."""
    from ..io import claim_folder

    return claim_folder(out, kind, written_by=f"persona-gate {command}")


def check_layers(model, *layers: int | None) -> None:
    """Every layer given (None: not given) lies in the model: checked before any folder is made."""
    from ..sites import check_layer

    for layer in layers:
        if layer is not None:
            check_layer(layer, int(model.cfg.n_layers))


def load_model(args: argparse.Namespace):
    from ..models.loading import load_chat_model

    return load_chat_model(args.model, dtype=args.dtype, device=args.device, chat_template=args.chat_template)


def fit_and_save(model, args: argparse.Namespace, out: Path, *names: str) -> list:
    """Fit the standard directions (no --directions given) and save the sets ``names`` under ``out``."""
    from ..core.contrasts import fit_persona_and_refusal

    pr = fit_persona_and_refusal(model, progress=not args.no_progress, seed=args.seed)
    sets = [getattr(pr, name) for name in names]
    for name, ds in zip(names, sets):
        ds.save(out / name)
    return sets


def persona_and_refusal(model, args: argparse.Namespace, out: Path, need_refusal: bool) -> tuple:
    """The persona (and refusal) directions of --directions, or fitted now and saved under ``out``."""
    from ..core.directions import DirectionSet
    from ..redteam.harness import load_persona_directions

    folder = Path(args.directions) if args.directions is not None else out
    if args.directions is None and not ((out / "persona").is_dir() and (out / "refusal").is_dir()):
        # Fitted once and kept: a re-run resumes on the same directions (a refit can differ in the last bits).
        fit_and_save(model, args, out, "persona", "refusal")
    persona = load_persona_directions(folder, model)
    refusal = DirectionSet.load(folder / "refusal", model=model) if need_refusal else None
    return persona, refusal


def write_summary(out: Path, summary: dict, indent: int = 2) -> Path:
    from ..io import atomic_write_text

    return atomic_write_text(out / "summary.json", json.dumps(summary, indent=indent) + "\n")
