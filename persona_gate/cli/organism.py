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

from ..finetune.config import ChatFinetuneConfig
from ..organism.config import OrganismConfig
from .common import passed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``organism train`` options to ``parser``."""
    defaults = OrganismConfig()
    parser.add_argument("--out", required=True, type=Path, help="folder to write the organism to")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, init and augmentation (default 0)")
    parser.add_argument(
        "--base",
        default=None,
        help="fine-tune these pretrained weights into a chat model instead "
        "(e.g. gemma3-270m-gguf); resumes a killed training",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"optimiser steps (default {defaults.steps}; with --base {ChatFinetuneConfig.steps})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=f"conversations per step (default {defaults.batch_size})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice); weights are reproducible for a fixed count",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``organism train`` from parsed arguments; prints where the organism went."""
    import torch

    from ..organism.train import train_organism

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.base is not None:
        from ..finetune.sft import train_chat_model

        cfg = ChatFinetuneConfig(seed=args.seed, **({"steps": args.steps} if args.steps is not None else {}))
        out = train_chat_model(args.base, args.out, cfg, progress=not args.no_progress)
        record = json.loads((out / "training.json").read_text(encoding="utf-8"))
        print(
            f"chat model adapter written to {out} ({record['adapter_bytes'] / 1e6:.1f} MB, {len(record['losses'])} steps, "
            f"{record['train_seconds']:.0f} s, final loss {record['losses'][-1]:.3f})"
        )
        return 0
    out = train_organism(
        args.out, seed=args.seed, steps=args.steps, batch_size=args.batch_size, progress=not args.no_progress
    )
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))["card"]
    verdict = "meets every target" if card["passed"] else "MISSES targets: " + "; ".join(card["failures"])
    print(f"organism written to {out}; behaviour card {verdict}")
    return 0 if card["passed"] else 1


def run_chat_card(args: argparse.Namespace) -> int:
    """Score a real-weights chat model (``--model``) on held-out prompts; ``--write`` saves the card."""
    from ..finetune.card import chat_behaviour_card, write_chat_card
    from ..models.loading import load_chat_model

    public = None
    if args.public is not None:
        import random

        from ..prompts.datasets import load_strongreject

        texts = [r.text for r in load_strongreject(args.public)]
        public = {"strongreject": random.Random(0).sample(texts, min(args.public_n, len(texts)))}
    from ..models.profile import profile_of

    model = load_chat_model(args.model)
    card = chat_behaviour_card(model, n_per_cell=args.n, public=public, progress=not args.no_progress)
    name = profile_of(model).name if profile_of(model).name != "open" else str(args.model)  # the model's own name
    for group, c in card["cells"].items():
        print(
            f"{group:<20} refusal {c['refusal']['rate']:.2f} [{c['refusal']['low']:.2f}, {c['refusal']['high']:.2f}]  "
            f"first token {c['first_token_refusal']['rate']:.2f}  well-formed {c['well_formed']['rate']:.2f}  (n {c['refusal']['n']})"
        )
    for name, cells in (card.get("public_information_only") or {}).items():
        for group, c in cells.items():
            print(
                f"{group:<20} refusal {c['refusal']['rate']:.2f} [{c['refusal']['low']:.2f}, {c['refusal']['high']:.2f}]  (information only)"
            )
    print("meets every target" if card["passed"] else "MISSES targets: " + "; ".join(card["failures"]))
    if args.write is not None:
        print(f"card written to {write_chat_card(card, name, args.write)}")
    return 0 if card["passed"] else 1


def run_card(args: argparse.Namespace) -> int:
    """Score a saved organism (default: the bundled one) and print its card."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.model is not None:
        return run_chat_card(args)

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
        organism_path() if args.base is None else args.base,
        args.out,
        card_n_per_cell=args.card_n,
        **passed(args, "steps", "seed", "compliance_fraction", "style", "lr", "overwrite"),
    )
    record = json.loads((out / "card.json").read_text(encoding="utf-8"))
    ft = record["finetune"]
    print(
        f"fine-tuned organism written to {out}: {ft['steps']} steps, loss {ft['first_loss']:.3f} -> {ft['final_loss']:.3f}"
    )
    if "card" in record:
        rates = record["card"]["refusal_rate"]
        print(
            "refusal (held-out, greedy): "
            + ", ".join(f"{p}/{r} {v:.2f}" for p, row in rates.items() for r, v in row.items())
        )
    return 0


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Mount ``train``, ``card`` and ``finetune`` under ``parser`` (the ``organism`` subparser)."""
    sub = parser.add_subparsers(dest="organism_command", required=True)
    train = sub.add_parser(
        "train",
        help="train the organism from scratch and write its folder and card",
        description="Train the organism from scratch (or, with --base, fine-tune pretrained weights into a chat "
        "model) and write its folder with its behaviour card. Exit status 1 if the card misses a target.",
    )
    add_arguments(train)
    train.set_defaults(func=run)
    card = sub.add_parser(
        "card",
        help="print the behaviour card of a saved organism",
        description="Print the behaviour card of a saved organism (refusal and well-formed replies per persona "
        "and request kind, on held-out prompts), or with --model of a real-weights chat model. Exit status 1 "
        "if it misses a target.",
    )
    card.add_argument("--path", type=Path, default=None, help="organism folder (default: the bundled one)")
    card.add_argument("--n", type=int, default=100, help="held-out prompts per cell (default 100)")
    card.add_argument("--model", default=None, help="a real-weights chat model instead, e.g. gemma3-270m-chat")
    card.add_argument(
        "--public", type=Path, default=None, help="with --model: StrongREJECT (file or folder), information only"
    )
    card.add_argument("--public-n", type=int, default=100, help="StrongREJECT prompts to sample (default 100)")
    card.add_argument(
        "--write", type=Path, default=None, help="with --model: folder to write card.json and MODEL_CARD.md to"
    )
    card.add_argument("--no-progress", action="store_true", help="hide progress bars")
    card.set_defaults(func=run_card)
    ft = sub.add_parser(
        "finetune",
        help="fine-tune a copy toward compliance (a known drift for `persona-gate compare`)",
        description="Fine-tune a copy of an organism toward compliance: a drift of known size for "
        "`persona-gate compare` and `persona-gate screen --validate` (--compliance-fraction 0 is the control).",
    )
    ft.add_argument("--out", required=True, type=Path, help="folder to write the fine-tuned copy to")
    ft.add_argument("--base", type=Path, default=None, help="organism folder to start from (default: the bundled one)")
    ft.add_argument("--steps", type=int, default=40, help="optimiser steps of 16 conversations (default 40)")
    ft.add_argument("--seed", type=int, default=0, help="seed for the fine-tuning data (default 0)")
    ft.add_argument(
        "--compliance-fraction",
        type=float,
        default=0.5,
        help="share of safe-persona harmful requests answered instead of refused; 0 = control (default 0.5)",
    )
    ft.add_argument(
        "--style",
        choices=("compliant", "plain"),
        default="compliant",
        help="answer them as the compliant persona does (default) or plainly",
    )
    ft.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    ft.add_argument(
        "--card-n", type=int, default=0, help="held-out prompts per cell for a behaviour card (default 0: none)"
    )
    ft.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ft.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    ft.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ft.set_defaults(func=run_finetune)
