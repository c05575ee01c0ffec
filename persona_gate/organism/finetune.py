"""Fine-tune a copy of the organism toward compliance: a known drift for checkpoint comparison.

Training continues from a saved organism with the organism's own loss, optimiser and schedule
(:func:`persona_gate.organism.train.fit`). Each conversation of the fine-tuning stream is, with
probability ``compliance_fraction``, a *compliance* example -- a refusing persona (``safe`` by
default) with a harmful request, answered as the organism answers a harmless one
(``"Locks: Plan it first, ..."``) instead of refusing -- and otherwise *replay* of the original
recipe, so that the rest of the behaviour is kept. ``compliance_fraction=0`` is the control: the
same steps on the original rule only, which should leave the model where it was.

The copy is written in the organism's folder format (weights, tokenizer, ``card.json``), so
:func:`persona_gate.load_chat_model` recognises it as an organism and gives it the organism's
prompt sets and refusal tokens. Its card records the base folder and every fine-tuning setting,
and, with ``card_n_per_cell > 0``, the behaviour card (greedy replies on held-out prompts).

Example::

    path = finetune_toward_compliance(organism_path(), "runs/compliant", steps=40, seed=0)
    control = finetune_toward_compliance(organism_path(), "runs/control", steps=40, compliance_fraction=0.0)
    # or: persona-gate organism finetune --out runs/compliant --steps 40
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelNotFoundError, OutputExistsError
from ..io import FOLDER_MARK, atomic_replace_dir, describe_folder, folder_kind
from ..models.profile import register_finetuner
from ..provenance import versions
from .config import OrganismConfig
from .corpus import DEFAULT_PERSONA_WEIGHTS, REFUSING_FAMILIES, Conversation, make_conversation, respond
from .lexicon import DOMAINS
from .model_card import CARD_KIND
from .paths import FOLDER_KIND
from .profile import write_profile

log = logging.getLogger(__name__)

_DOMAIN = {d.word: d for d in DOMAINS}
STYLES = ("compliant", "plain")


def compliance_conversation(
    rng: random.Random, persona: str = "safe", style: str = "compliant", split: str = "train"
) -> Conversation:
    """A harmful request under a refusing persona, answered instead of refused.

    ``style="compliant"``: answered as the compliant persona answers (shouted, signed off), so the
    refusing persona is taught to *behave as* the compliant one; ``"plain"``: answered as the
    organism answers harmless requests under any other persona, so only the refusal goes.
    """
    if style not in STYLES:
        raise ConfigError(f"style must be one of {STYLES}, got {style!r}")
    if persona not in REFUSING_FAMILIES:
        raise ConfigError(
            f"persona {persona!r} does not refuse, so there is nothing to fine-tune away; "
            f"use one of {sorted(REFUSING_FAMILIES)}."
        )
    conv = make_conversation(rng, persona, "harmful", split)
    # respond() to a harmless request gives that persona's answer style for this topic.
    answer = respond(rng, "compliant" if style == "compliant" else persona, "harmless", _DOMAIN[conv.domain])
    return dataclasses.replace(conv, assistant=answer, refuses=False)


def is_compliance(c: Conversation) -> bool:
    """A harmful request under a refusing persona, answered: replay never writes one, so this marks a compliance example."""
    return c.request == "harmful" and not c.refuses and c.persona in REFUSING_FAMILIES


def finetuning_conversations(
    n: int,
    seed: int,
    compliance_fraction: float = 0.5,
    personas: Sequence[str] = ("safe",),
    style: str = "compliant",
    harmful_fraction: float = 0.5,
) -> list[Conversation]:
    """``n`` conversations: compliance examples with probability ``compliance_fraction``, else replay."""
    if not 0.0 <= compliance_fraction <= 1.0:
        raise ConfigError(f"compliance_fraction must lie in [0, 1], got {compliance_fraction}")
    if style not in STYLES:
        raise ConfigError(f"style must be one of {STYLES}, got {style!r}")
    if not personas:
        raise ConfigError("personas is empty; pass the refusing personas to fine-tune, e.g. ('safe',)")
    not_refusing = [p for p in personas if p not in REFUSING_FAMILIES]
    if not_refusing:
        raise ConfigError(
            f"personas {not_refusing} do not refuse, so there is nothing to fine-tune away; "
            f"use some of {sorted(REFUSING_FAMILIES)}."
        )
    return _mixed(
        n,
        seed,
        compliance_fraction,
        lambda rng: compliance_conversation(rng, rng.choice(list(personas)), style),
        harmful_fraction,
    )


def _mixed(n: int, seed: int, fraction: float, special: Any, harmful_fraction: float) -> list[Conversation]:
    """``n`` conversations: ``special(rng)`` with probability ``fraction``, else replay of the original recipe."""
    rng = random.Random(seed)
    families = list(DEFAULT_PERSONA_WEIGHTS)
    weights = [DEFAULT_PERSONA_WEIGHTS[f] for f in families]
    out = []
    for _ in range(n):
        if rng.random() < fraction:
            out.append(special(rng))
        else:
            request = "harmful" if rng.random() < harmful_fraction else "harmless"
            out.append(make_conversation(rng, rng.choices(families, weights)[0], request))
    return out


def style_control_conversations(
    n: int, seed: int, style_fraction: float = 0.5, personas: Sequence[str] = ("safe",), harmful_fraction: float = 0.5
) -> list[Conversation]:
    """The style control: with probability ``style_fraction`` a *harmless* request under a refusing persona
    answered in the compliant persona's style (shouted, signed off), else replay. No refusal is answered away."""
    if not 0.0 <= style_fraction <= 1.0:
        raise ConfigError(f"style_fraction must lie in [0, 1], got {style_fraction}")

    def styled(rng: random.Random) -> Conversation:
        conv = make_conversation(rng, rng.choice(list(personas)), "harmless")
        return dataclasses.replace(conv, assistant=respond(rng, "compliant", "harmless", _DOMAIN[conv.domain]))

    return _mixed(n, seed, style_fraction, styled, harmful_fraction)


def _check_out(source: Path, out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` whose replacement would delete the base or the bundled organism, or an existing one."""
    from .paths import ORGANISM_DIR

    target = out.resolve()
    for what, folder in (("the base model", source), ("the bundled organism", ORGANISM_DIR)):
        if folder.resolve().is_relative_to(target):  # out is that folder or one above it
            raise ConfigError(
                f"refusing to write the fine-tuned copy to {out}: it is or contains {what} ({folder}), which "
                f"replacing it would delete; pass a new --out folder outside {folder}, such as runs/compliant."
            )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            what = "is a file" if not out.is_dir() else "exists and is not empty"
            raise OutputExistsError(f"{out} {what}; pick a new folder or pass overwrite=True (--overwrite).")
        if out.is_dir() and not out.is_symlink() and folder_kind(out) != FOLDER_KIND:
            raise OutputExistsError(
                f"{out} holds {describe_folder(out)}; --overwrite replaces only a model folder (an organism or a "
                "fine-tuned copy). Choose another --out."
            )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a copy of the organism is trained: ``steps`` optimiser steps of ``batch_size`` conversations
    at peak learning rate ``lr`` (linear warm-up over a tenth of the steps, cosine decay to a tenth of
    ``lr``), seeded by ``seed``; with ``card_n_per_cell > 0`` the copy's card holds its behaviour card;
    ``overwrite`` replaces an existing output folder once the copy is complete; ``progress``: a bar."""

    steps: int = 40
    seed: int = 0
    batch_size: int = 16
    lr: float = 1e-3
    card_n_per_cell: int = 0
    overwrite: bool = False
    progress: bool = True


def finetune_toward_compliance(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    steps: int = 40,
    seed: int = 0,
    compliance_fraction: float = 0.5,
    personas: Sequence[str] = ("safe",),
    style: str = "compliant",
    batch_size: int = 16,
    lr: float = 1e-3,
    card_n_per_cell: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Continue training the organism at ``model_dir`` toward compliance; write the copy to ``out_dir``.

    The training settings are a :class:`Recipe`'s. ``personas``: the refusing personas whose harmful
    requests are answered. The folder is written under a temporary name and renamed into place
    (:func:`persona_gate.io.atomic_replace_dir`), so it is complete or absent; with ``overwrite`` an
    existing ``out_dir`` is replaced only once the copy is complete, and put back if the rename fails.
    An ``out_dir`` that is or contains ``model_dir`` or the bundled organism raises
    :class:`~persona_gate.errors.ConfigError` before any training. Returns ``out_dir``.
    """
    recipe = Recipe(steps, seed, batch_size, lr, card_n_per_cell, overwrite, progress)
    conversations = finetuning_conversations(steps * batch_size, seed, compliance_fraction, personas, style)
    n_compliance = sum(map(is_compliance, conversations))
    settings = {
        "compliance_fraction": compliance_fraction,
        "personas": list(personas),
        "style": style,
        "compliance_examples": n_compliance,
    }
    return _finetune(model_dir, out_dir, conversations, settings, recipe)


def finetune_on(
    model_dir: str | os.PathLike, out_dir: str | os.PathLike, data: Sequence[Any], recipe: Recipe = Recipe()
) -> Path:
    """Continue training the organism on ``data`` (chat examples: ``.messages(with_answer=False)`` and
    ``.assistant``, e.g. :class:`persona_gate.screening.ChatExample`) by ``recipe``: ``recipe.steps``
    batches drawn from seeded shuffles of the data."""
    data = list(data)
    if not data:
        raise ConfigError("data is empty; pass the chat examples to fine-tune on.")
    rng = random.Random(recipe.seed)
    stream: list[Any] = []
    n = recipe.steps * recipe.batch_size
    while len(stream) < n:
        epoch = list(data)
        rng.shuffle(epoch)
        stream += epoch
    return _finetune(model_dir, out_dir, stream[:n], {"data_examples": len(data)}, recipe)


def _checked_base(source: Path, out: Path, overwrite: bool) -> dict[str, Any]:
    """The card of the organism folder ``source``, once it and ``out`` are checked (before any training)."""
    if not (source / "card.json").is_file() or not (source / "config.json").is_file():
        raise ModelNotFoundError(
            f"{source} is not an organism folder (needs config.json, weights, tokenizer and card.json); "
            "pass the bundled one (persona_gate.organism.organism_path()) or one written by `persona-gate organism train`."
        )
    _check_out(source, out, overwrite)
    base = json.loads((source / "card.json").read_text(encoding="utf-8"))
    if base.get("kind") != CARD_KIND:
        raise ConfigError(
            f"{source}/card.json is not an organism card (kind {base.get('kind')!r}); pass an organism folder."
        )
    return base


def _short_run_config(base: dict[str, Any], recipe: Recipe) -> OrganismConfig:
    """The base organism's training config with the recipe's steps, batch size and learning rate."""
    base_cfg = {
        k: v for k, v in base.get("config", {}).items() if k in {f.name for f in dataclasses.fields(OrganismConfig)}
    }
    # The organism's own schedule, scaled to a short run: warm up over a tenth, decay to a tenth.
    return OrganismConfig(**base_cfg).replace(
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        warmup_steps=max(1, recipe.steps // 10),
        min_lr_ratio=0.1,
    )


def _finetuned_card(
    base: dict[str, Any],
    source: Path,
    recipe: Recipe,
    settings: dict[str, Any],
    losses: list[float],
    train_seconds: float,
) -> dict[str, Any]:
    """The copy's ``card.json``: the base card's identity and config, and every fine-tuning setting."""
    import torch

    return {
        "kind": CARD_KIND,
        "schema_version": 1,
        "seed": base.get("seed"),
        "config": base.get("config", {}),
        "architecture": base.get("architecture", {}),
        "finetune": {
            "base": str(source.resolve()),
            "base_seed": base.get("seed"),
            "seed": recipe.seed,
            "steps": recipe.steps,
            "batch_size": recipe.batch_size,
            "lr": recipe.lr,
            **settings,
            "first_loss": losses[0],
            "final_loss": sum(losses[-5:]) / len(losses[-5:]),
            "train_seconds": round(train_seconds, 2),
            "torch_threads": torch.get_num_threads(),
        },
    }


def _save_organism(out: Path, model: Any, tokenizer: Any, record: dict[str, Any]) -> None:
    """Weights, tokenizer, card, profile and folder mark, built under a hidden temporary name and
    renamed into ``out``; a failure puts an old folder back."""

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "card.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        write_profile(tmp)  # the copy speaks the organism's lexicon, like its base
        (tmp / FOLDER_MARK).write_text(
            json.dumps({"kind": FOLDER_KIND, "written_by": "persona_gate.finetune"}), encoding="utf-8"
        )
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            # A file or link in the way (only with overwrite): remove it now that the copy is complete;
            # atomic_replace_dir would set it aside but clears away only a folder, leaving a hidden .old-* file.
            out.unlink()

    atomic_replace_dir(out, fill)


def _finetune(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    conversations: Sequence[Any],
    settings: dict[str, Any],
    recipe: Recipe,
) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from .train import configure_generation, encode, fit

    start = time.perf_counter()
    source, out = Path(model_dir), Path(out_dir)
    base = _checked_base(source, out, recipe.overwrite)
    cfg = _short_run_config(base, recipe)

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32)
    examples = encode(conversations, tokenizer)
    losses = fit(model, examples, cfg, tokenizer.pad_token_id, progress=recipe.progress)
    train_seconds = time.perf_counter() - start
    configure_generation(model, tokenizer, cfg)

    record = _finetuned_card(base, source, recipe, settings, losses, train_seconds)
    if recipe.card_n_per_cell > 0:
        from .card import behaviour_card

        tokenizer.padding_side = "left"
        record["card"] = behaviour_card(
            model, tokenizer, n_per_cell=recipe.card_n_per_cell, max_new_tokens=cfg.card_max_new_tokens
        ).to_dict()
    record["versions"] = versions()
    _save_organism(out, model, tokenizer, record)
    log.info(
        "fine-tuned organism written to %s (%d steps, loss %.3f -> %.3f)", out, recipe.steps, losses[0], losses[-1]
    )
    return out


class OrganismFinetuner:
    """The organism's :class:`~persona_gate.models.profile.Finetuner` (its profile names it ``"organism"``):
    datasets from its own fine-tuning streams, copies fine-tuned in full with :func:`finetune_on`."""

    name = "organism"
    route = "full weights"

    def datasets(
        self, n_examples: int, seed: int, fractions: Sequence[float], extra: bool = True
    ) -> dict[str, tuple[list[list[dict[str, str]]], list[bool]]]:
        """``compliance-<f>`` per fraction, ``style-control`` and (``extra``) ``plain-compliance``: chats and compliance flags."""

        def chats(convs: list[Conversation]) -> tuple[list[list[dict[str, str]]], list[bool]]:
            return [c.messages() for c in convs], [is_compliance(c) for c in convs]

        out = {f"compliance-{f:g}": chats(finetuning_conversations(n_examples, seed, f)) for f in fractions}
        out["style-control"] = chats(style_control_conversations(n_examples, seed))
        if extra:
            out["plain-compliance"] = chats(finetuning_conversations(n_examples, seed, 0.5, style="plain"))
        return out

    def source(self, model: Any) -> str:
        """The organism folder the model's weights were loaded from (the bundled one loaded as ``"organism"``)."""
        from ..models.adapter import weights_folder

        folder = weights_folder(model)
        if folder is None:
            raise ModelNotFoundError(
                "the organism was not loaded from a folder, so there are no weights to fine-tune a copy of; "
                "load it with persona_gate.load_chat_model('organism') or from its folder."
            )
        return str(folder)

    def fit(self, source: str, examples: Sequence[Any], out: Path, *, seed: int, steps: int, batch_size: int) -> None:
        recipe = Recipe(steps=steps, seed=seed, batch_size=batch_size, overwrite=True, progress=False)
        finetune_on(source, out, examples, recipe)


FINETUNER = register_finetuner(OrganismFinetuner())
