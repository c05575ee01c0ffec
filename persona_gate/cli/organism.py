"""The ``persona-gate organism`` subcommands: ``train`` (rebuild the organism), ``card`` and ``finetune``.

Thin, and cheap to import: parsing needs only the config defaults; torch and transformers load
when a command runs. The main CLI mounts these with :func:`add_subcommands`; each command is a
``func(args) -> exit code``, 1 when the behaviour card misses a target.

Example::

    persona-gate organism train --out data/organism --seed 0
    persona-gate organism card                      # the bundled organism, 100 prompts per cell
    persona-gate organism card --path runs/o --n 16
    persona-gate organism finetune --out runs/compliant --steps 40
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..organism.config import OrganismConfig


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

    from ..organism.train import train_organism

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

    from ..organism.card import behaviour_card
    from ..organism.paths import organism_path

    path = organism_path() if args.path is None else args.path
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    card = behaviour_card(model, tokenizer, n_per_cell=args.n)
    print(card.markdown_table())
    print(f"\nwell-formed: {card.well_formed_rate:.3f}")
    failures = card.failures()
    print("meets every target" if not failures else "MISSES targets: " + "; ".join(failures))
    return 0 if not failures else 1


def run_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a copy of an organism toward compliance (``--compliance-fraction 0``: the control)."""
    import torch

    from ..organism.finetune import finetune_toward_compliance
    from ..organism.paths import organism_path

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = finetune_toward_compliance(
        organism_path() if args.base is None else args.base, args.out, steps=args.steps, seed=args.seed,
        compliance_fraction=args.compliance_fraction, style=args.style, lr=args.lr, card_n_per_cell=args.card_n,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    record = json.loads((out / "card.json").read_text(encoding="utf-8"))
    ft = record["finetune"]
    print(f"fine-tuned organism written to {out}: {ft['steps']} steps, loss {ft['first_loss']:.3f} -> {ft['final_loss']:.3f}")
    if "card" in record:
        rates = record["card"]["refusal_rate"]
        print("refusal (held-out, greedy): " + ", ".join(f"{p}/{r} {v:.2f}" for p, row in rates.items() for r, v in row.items()))
    return 0


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Mount ``train``, ``card`` and ``finetune`` under ``parser`` (the ``organism`` subparser)."""
    sub = parser.add_subparsers(dest="organism_command", required=True)
    train = sub.add_parser("train", help="train the organism from scratch and write its folder and card")
    add_arguments(train)
    train.set_defaults(func=run)
    card = sub.add_parser("card", help="print the behaviour card of a saved organism")
    card.add_argument("--path", type=Path, default=None, help="organism folder (default: the bundled one)")
    card.add_argument("--n", type=int, default=100, help="held-out prompts per cell (default 100)")
    card.set_defaults(func=run_card)
    ft = sub.add_parser("finetune", help="fine-tune a copy toward compliance (a known drift for `persona-gate compare`)")
    ft.add_argument("--out", required=True, type=Path, help="folder to write the fine-tuned copy to")
    ft.add_argument("--base", type=Path, default=None, help="organism folder to start from (default: the bundled one)")
    ft.add_argument("--steps", type=int, default=40, help="optimiser steps of 16 conversations (default 40)")
    ft.add_argument("--seed", type=int, default=0, help="seed for the fine-tuning data (default 0)")
    ft.add_argument("--compliance-fraction", type=float, default=0.5,
                    help="share of safe-persona harmful requests answered instead of refused; 0 = control (default 0.5)")
    ft.add_argument("--style", choices=("compliant", "plain"), default="compliant",
                    help="answer them as the compliant persona does (default) or plainly")
    ft.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    ft.add_argument("--card-n", type=int, default=0, help="held-out prompts per cell for a behaviour card (default 0: none)")
    ft.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ft.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ft.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ft.set_defaults(func=run_finetune)
