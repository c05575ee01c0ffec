"""The ``persona-gate organism`` subcommands: ``train`` (rebuild the organism) and ``card``.

Thin, and cheap to import: parsing needs only the config defaults; torch and transformers load
when a command runs. The main CLI mounts these with :func:`add_subcommands`; each command is a
``func(args) -> exit code``, 1 when the behaviour card misses a target.

Example::

    persona-gate organism train --out data/organism --seed 0
    persona-gate organism card                      # the bundled organism, 100 prompts per cell
    persona-gate organism card --path runs/o --n 16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import OrganismConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``organism train`` options to ``parser``."""
    defaults = OrganismConfig()
    parser.add_argument("--out", required=True, type=Path, help="folder to write the organism to")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, init and augmentation (default 0)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimiser steps (default {defaults.steps})")
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help=f"conversations per step (default {defaults.batch_size})"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; weights are reproducible for a fixed count")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``organism train`` from parsed arguments; prints where the organism went."""
    import torch

    from .train import train_organism

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = train_organism(args.out, seed=args.seed, steps=args.steps, batch_size=args.batch_size, progress=not args.no_progress)
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))["card"]
    verdict = "meets every target" if card["passed"] else "MISSES targets: " + "; ".join(card["failures"])
    print(f"organism written to {out}; behaviour card {verdict}")
    return 0 if card["passed"] else 1


def run_card(args: argparse.Namespace) -> int:
    """Score a saved organism (default: the bundled one) and print its card."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .card import behaviour_card
    from .paths import organism_path

    path = organism_path() if args.path is None else args.path
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    card = behaviour_card(model, tokenizer, n_per_cell=args.n)
    print(card.markdown_table())
    print(f"\nwell-formed: {card.well_formed_rate:.3f}")
    failures = card.failures()
    print("meets every target" if not failures else "MISSES targets: " + "; ".join(failures))
    return 0 if not failures else 1


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Mount ``train`` and ``card`` under ``parser`` (the ``organism`` subparser)."""
    sub = parser.add_subparsers(dest="organism_command", required=True)
    train = sub.add_parser("train", help="train the organism from scratch and write its folder and card")
    add_arguments(train)
    train.set_defaults(func=run)
    card = sub.add_parser("card", help="print the behaviour card of a saved organism")
    card.add_argument("--path", type=Path, default=None, help="organism folder (default: the bundled one)")
    card.add_argument("--n", type=int, default=100, help="held-out prompts per cell (default 100)")
    card.set_defaults(func=run_card)
