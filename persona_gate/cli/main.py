"""The ``persona-gate`` command: the parser, and :func:`main`, which runs one command.

Each command group lives in its own module and mounts itself here: :mod:`.run` (directions,
demo, run, report), :mod:`.apps` (redteam, compare, monitor), :mod:`.defences` (screen,
guard), :mod:`.organism` and :mod:`.export`; the flags they share are declared once in
:mod:`.common`. Logging set-up and environment handling live in :func:`main` only; the library
itself logs and never prints.

Example::

    persona-gate directions                      # bundled organism, offline
    persona-gate directions --model path/to/model.gguf --chat-template gemma --n 32
    persona-gate organism train --out data/organism --seed 0
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import PersonaGateError
from . import apps, defences
from . import export as export_cli
from . import organism as organism_cli
from . import run as run_cli
from .common import Parser, add_model_args, layers


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="persona-gate",
        description="Does this chat model's persona gate its refusal, and at which layers?",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"persona-gate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_cli.add_directions_command(sub)
    run_cli.add_run_commands(sub)
    run_cli.add_report_command(sub)
    apps.add_redteam_command(sub)
    apps.add_compare_command(sub)
    apps.add_monitor_command(sub)
    defences.add_screen_command(sub)
    defences.add_guard_command(sub)
    o = sub.add_parser(
        "organism",
        help="the bundled chat-model organism",
        description="The bundled organism: a small chat model trained so that its persona gates its refusal. "
        "Train it again, print its behaviour card, or fine-tune a copy toward compliance.",
    )
    organism_cli.add_subcommands(o)
    x = sub.add_parser(
        "export",
        help="export edited weights, a llama.cpp control vector or plain directions",
        description="Export what persona_gate found for use elsewhere: weights with a direction ablated or "
        "steered in (a Hugging Face folder), a llama.cpp control vector, or the directions as safetensors.",
    )
    export_cli.add_subcommands(x, add_model_args, layers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
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
