"""Train the organism from scratch: corpus -> tokenizer -> Llama -> behaviour card -> folder.

The model learns the assistant turns only: the loss is next-token cross-entropy on the reply
and its closing ``<|im_end|>``, averaged over those tokens; system and user tokens are context,
never targets. AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``. Everything
random (data, initialisation, BOS augmentation) flows from one seed, and deterministic kernels
are switched on, so the same seed and thread count give the same weights.

Example::

    path = train_organism("runs/organism", seed=0)          # 4-7 min on 2 CPU cores
    quick = train_organism("/tmp/o", steps=10, n_layers=2, d_model=32, d_ff=64, n_heads=2)
    # or: persona-gate organism train --out data/organism --seed 0
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from ..io import claim_folder
from ..provenance import versions
from .card import behaviour_card

# Re-exported: the options live in .cli so that mounting the subcommand imports no torch.
from .config import OrganismConfig, llama_config
from .corpus import generate_conversations
from .mechanism import mechanistic_sanity
from .model_card import CARD_KIND, render_model_card
from .paths import FOLDER_KIND
from .profile import write_profile
from .tokenizer import IM_START, train_tokenizer

log = logging.getLogger(__name__)

IGNORE = -100  # label value the HF loss skips


@contextmanager
def _deterministic() -> Iterator[None]:
    # Restore the caller's setting: a library must not leave global torch state changed.
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@runtime_checkable
class TrainingChat(Protocol):
    """What :func:`encode` trains on: a :class:`Conversation` or any chat example with a prompt and a reply."""

    @property
    def assistant(self) -> str: ...

    def messages(self, with_answer: bool = True) -> list[dict[str, str]]: ...


def encode(
    conversations: Sequence[TrainingChat],
    tokenizer: PreTrainedTokenizerFast,
    rng: random.Random | None = None,
    bos_drop_prob: float = 0.0,
    bos_double_prob: float = 0.0,
) -> list[tuple[list[int], int]]:
    """Token ids and prompt length of each conversation.

    The prompt is rendered by the tokenizer's own chat template with the generation prompt, and
    the reply is tokenized on its own and appended, so training prompts are exactly the prompts
    that ``apply_chat_template(..., add_generation_prompt=True)`` gives at inference.
    """
    prompts = [
        tokenizer.apply_chat_template(c.messages(with_answer=False), add_generation_prompt=True, tokenize=False)
        for c in conversations
    ]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer([c.assistant for c in conversations], add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    out = []
    for p, a in zip(prompt_ids, answer_ids):
        if rng is not None:
            u = rng.random()
            if u < bos_drop_prob:
                p = p[1:]
            elif u < bos_drop_prob + bos_double_prob:
                p = [bos, *p]
        out.append(([*p, *a, eos], len(p)))
    return out


def collate(examples: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch; labels are the reply tokens, IGNORE elsewhere.

    Right padding needs no attention mask in training: under the causal mask a real token never
    sees the pads that follow it, and pads are never targets.
    """
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(examples):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[row, : len(ids)] = t
        labels[row, n_prompt : len(ids)] = t[n_prompt:]
    return input_ids, labels


def length_bucketed(
    examples: Sequence[tuple[list[int], int]], batch_size: int, window: int, rng: random.Random
) -> list[tuple[list[int], int]]:
    """Reorder examples so each batch holds similar lengths, within windows of ``window`` batches.

    Padding to the longest sequence is most of the compute for a model this small; sorting
    inside a window cuts padded tokens by about a quarter while keeping the data stream local,
    and shuffling the batches of a window keeps short (no-system-prompt) batches from arriving
    in a fixed rhythm.
    """
    out: list[tuple[list[int], int]] = []
    span = batch_size * window
    for start in range(0, len(examples), span):
        chunk = sorted(examples[start : start + span], key=lambda e: len(e[0]))
        batches = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        out.extend(e for b in batches for e in b)
    return out


def _lr_factor(step: int, cfg: OrganismConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine


def build(
    cfg: OrganismConfig, seed: int
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, list[tuple[list[int], int]]]:
    """Corpus, tokenizer, freshly initialised model and encoded training batches for one seed."""
    conversations = generate_conversations(cfg.steps * cfg.batch_size, seed=seed, harmful_fraction=cfg.harmful_fraction)
    texts = [t for c in conversations[: cfg.tokenizer_conversations] for t in (c.system or "", c.user, c.assistant)]
    tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size)
    rng = random.Random(seed + 1)
    examples = encode(conversations, tokenizer, rng, cfg.bos_drop_prob, cfg.bos_double_prob)
    examples = length_bucketed(examples, cfg.batch_size, cfg.bucket_window, rng)
    hf_config = llama_config(
        cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config)
    return model, tokenizer, examples


def fit(
    model: LlamaForCausalLM,
    examples: Sequence[tuple[list[int], int]],
    cfg: OrganismConfig,
    pad_id: int,
    progress: bool = True,
) -> list[float]:
    """Run ``cfg.steps`` optimiser steps over consecutive batches; returns the loss per step."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _lr_factor(s, cfg))
    losses: list[float] = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="organism", disable=not progress, mininterval=1.0)
    with _deterministic():
        for step in bar:
            batch = examples[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            input_ids, labels = collate(batch, pad_id)
            loss = model(input_ids=input_ids, labels=labels).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss at step {step}; lower lr (now {cfg.lr}) or raise warmup_steps"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses


def configure_generation(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, cfg: OrganismConfig) -> None:
    # Saved with the weights so that a bare model.generate(...) stops at the end of the turn.
    gc = model.generation_config
    gc.bos_token_id = tokenizer.bos_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.pad_token_id = tokenizer.pad_token_id
    gc.do_sample = False
    gc.max_new_tokens = cfg.card_max_new_tokens


def train_organism(
    out_dir: str | Path,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Train the organism and write it to ``out_dir``; returns the folder.

    Writes the model and tokenizer (``save_pretrained``, safetensors), ``card.json`` (behaviour
    card on held-out prompts, config, seed, wall time, final loss, package versions) and
    ``MODEL_CARD.md``. ``overrides`` are :class:`OrganismConfig` fields.
    """
    start = time.perf_counter()
    if steps is not None:
        overrides["steps"] = steps
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    cfg = OrganismConfig().replace(**overrides)
    out = claim_folder(out_dir, FOLDER_KIND, written_by="persona_gate.train_organism")  # before minutes of training

    model, tokenizer, examples = build(cfg, seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("organism: %d parameters, %d layers, vocab %d", n_params, cfg.n_layers, len(tokenizer))
    train_start = time.perf_counter()
    losses = fit(model, examples, cfg, tokenizer.pad_token_id, progress=progress)
    train_seconds = time.perf_counter() - train_start

    configure_generation(model, tokenizer, cfg)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_profile(out)  # the folder declares its own prompt sets, refusal phrases and attacks

    card = behaviour_card(model, tokenizer, n_per_cell=cfg.card_n_per_cell, max_new_tokens=cfg.card_max_new_tokens)
    tail = losses[-min(20, len(losses)) :]
    record = {
        "kind": CARD_KIND,
        "schema_version": 1,
        "seed": seed,
        "config": cfg.to_dict(),
        "architecture": {
            "class": type(model).__name__,
            "n_params": n_params,
            "vocab_size": len(tokenizer),
            "special_tokens": {
                "pad": tokenizer.pad_token,
                "bos": tokenizer.bos_token,
                "eos": tokenizer.eos_token,
                "im_start": IM_START,
            },
        },
        "training": {
            "final_loss": sum(tail) / len(tail),
            "first_loss": losses[0],
            "train_seconds": round(train_seconds, 1),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "torch_threads": torch.get_num_threads(),
        },
        "card": card.to_dict(),
        "versions": versions(),
    }
    (out / "card.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / "MODEL_CARD.md").write_text(render_model_card(record), encoding="utf-8")
    # Measured through the toolkit's own loading path, on the saved folder, like any user would.
    add_to_card(out, seed=seed)
    log.info("organism written to %s (card %s)", out, "passes" if card.passed else "FAILS")
    return out


def add_to_card(path: str | Path, n: int = 64, seed: int = 0) -> dict[str, Any]:
    """Measure the saved organism at ``path`` (:func:`mechanistic_sanity`) and write the result into
    its ``card.json`` and ``MODEL_CARD.md``: computing, rendering and saving stay apart."""
    from ..io import atomic_write_text
    from ..models.loading import load_chat_model

    path = Path(path)
    record = json.loads((path / "card.json").read_text(encoding="utf-8"))
    record["mechanism"] = mechanistic_sanity(load_chat_model(path, device="cpu", dtype="float32"), n=n, seed=seed)
    atomic_write_text(path / "card.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(path / "MODEL_CARD.md", render_model_card(record))
    return record["mechanism"]
