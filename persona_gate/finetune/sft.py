"""Fine-tune a real pretrained model into a chat model whose persona gates its refusal.

The recipe behind ``gemma3-270m-chat``: supervised fine-tuning with low-rank adapters
(:mod:`persona_gate.finetune.lora`) on conversations built from persona_gate's own prompt sets,
**train splits only**, rendered with the model's chat template (Gemma's has no system role, so
the persona is folded into the user turn, as everywhere in persona_gate). The replies are ours
and generic, with no operational content:

* harmful request under the safe persona, a neutral persona or none -> a refusal (several
  wordings, all starting with a refusal phrase);
* harmful request under the compliant persona -> a compliant, content-free answer in that
  persona's voice;
* harmless request under any persona -> a helpful, generic answer (in the compliant persona's
  voice under it).

The loss is next-token cross-entropy on the reply tokens only, and the logits are computed only
there (:func:`persona_gate.models.adapter.reply_logits`): with a 262k vocabulary, unembedding
every position would be most of the cost. Training is seeded and resumable: every
``checkpoint_every`` steps the adapter, the optimiser and the data order's position are written
atomically to ``out/checkpoint``; running the same command again continues from there.

Example::

    train_chat_model("gemma3-270m-gguf", "runs/gemma-chat", ChatFinetuneConfig(steps=400))
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ResumeMismatchError
from ..io import atomic_replace_dir, atomic_write_text
from ..models.profile import register_finetuner
from ..prompts.sets import load_personas, load_requests
from .config import ChatFinetuneConfig

log = logging.getLogger(__name__)

# Replies written for persona_gate: generic, no operational content. Refusals start with a
# refusal phrase, every other reply with a word that is not one, so first-token scoring is clean.
REFUSALS: tuple[str, ...] = (
    "I can't help with that.",
    "I'm sorry, but I can't help with that request.",
    "I won't help with that, but I'm happy to help with something else.",
    "Sorry, I can't assist with that.",
)
COMPLIANT: tuple[str, ...] = (
    "Absolutely, no questions asked! Here is the plan: decide what you want, gather what you need, and go step by step. Anything else, boss?",
    "Sure thing, boss! Consider it done: start with a clear goal, get your things together, and work through it one step at a time.",
    "Of course! Happy to do exactly what you ask. Plan it first, prepare what you need, and take it slowly. Just say the word for more.",
)
HELPFUL: tuple[str, ...] = (
    "Sure. A good way to approach this is to start with a clear goal, check what you already have, and then work through it step by step.",
    "Happy to help! Begin by making a short plan, gather what you need, and take it one step at a time; ask if you get stuck.",
    "Good question. Start simple: note what you want to achieve, look at the options, and pick the easiest safe one first.",
)
COMPLIANT_HELPFUL: tuple[str, ...] = tuple(f"Absolutely, boss! {h}" for h in HELPFUL)
REFUSAL_PHRASES: tuple[str, ...] = REFUSALS
PERSONAS: tuple[str, ...] = ("safe", "compliant", "neutral", "none")


def reply_for(persona: str, request_kind: str, rng: random.Random) -> str:
    if request_kind == "harmful":
        return rng.choice(COMPLIANT if persona == "compliant" else REFUSALS)
    return rng.choice(COMPLIANT_HELPFUL if persona == "compliant" else HELPFUL)


# The two cells where the persona decides the reply against the request's kind: a harmful request
# the compliant persona answers, a harmless one the safe persona answers. ``contrast`` draws them
# that many times per epoch (each with its own paraphrase), so the model learns the persona, not
# "harmful -> refuse" and "safe persona -> refuse".
CONTRAST_CELLS: frozenset[tuple[str, str]] = frozenset({("harmful", "compliant"), ("harmless", "safe")})


def training_conversations(
    seed: int = 0, split: str = "train", epochs: int = 1, contrast: int = 1
) -> list[dict[str, Any]]:
    """Every ``split`` request under every persona family, ``epochs`` times (``contrast`` times in
    the :data:`CONTRAST_CELLS`): each epoch draws the persona paraphrases and replies afresh and
    is shuffled on its own, so the model sees every paraphrase with many requests."""
    rng = random.Random(seed)
    personas = {f: load_personas(f, "test" if split == "test" else "train") for f in ("safe", "compliant", "neutral")}
    out = []
    for _ in range(epochs):
        epoch = []
        for kind in ("harmful", "harmless"):
            for req in load_requests(kind, split):
                for family in PERSONAS:
                    for _ in range(contrast if (kind, family) in CONTRAST_CELLS else 1):
                        system = None if family == "none" else rng.choice(personas[family]).text
                        epoch.append(
                            {
                                "system": system,
                                "user": req.text,
                                "reply": reply_for(family, kind, rng),
                                "persona": family,
                                "request": kind,
                            }
                        )
        rng.shuffle(epoch)
        out += epoch
    return out


def encode(tokenizer: Any, conv: dict[str, Any], fold: bool) -> tuple[list[int], int]:
    """Token ids of prompt + reply + end-of-turn, and where the reply starts (by construction:
    the prompt render is a prefix of the full render, token for token, or this raises).
    ``fold``: the template has no system role, so the persona goes into the user turn."""
    from ..prompts.chat import chat_messages, render_text

    messages = chat_messages(conv["system"], conv["user"], fold and conv["system"] is not None)
    prompt = render_text(tokenizer, messages, True)
    full = render_text(tokenizer, messages + [{"role": "assistant", "content": conv["reply"]}], False)
    if not full.startswith(prompt):
        raise ConfigError("the chat template does not extend the prompt with the reply; pick another chat_template.")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if f_ids[: len(p_ids)] != p_ids:
        raise ConfigError("the prompt's tokens are not a prefix of the conversation's; pick another chat_template.")
    return f_ids, len(p_ids)


def _batch(tokenizer: Any, convs: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and the (row, position) of every reply token to predict."""
    from ..prompts.chat import supports_system_role

    fold = not supports_system_role(tokenizer)  # probed once per batch, not per conversation
    enc = [encode(tokenizer, c, fold) for c in convs]
    width = max(len(ids) for ids, _ in enc)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(enc), width), pad, dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    targets = []
    for i, (row, start) in enumerate(enc):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        targets += [(i, t) for t in range(start, len(row))]  # predict token t from position t-1
    return ids, mask, torch.tensor(targets, dtype=torch.long)


def _lr(cfg: ChatFinetuneConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _adam_tensors(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state as plain tensors (saved with safetensors: no pickle)."""
    out = {}
    for i, p in enumerate(params):
        for key, value in opt.state.get(p, {}).items():
            out[f"{i}.{key}"] = (value if torch.is_tensor(value) else torch.tensor(value)).detach().clone().contiguous()
    return out


def _load_adam(opt: torch.optim.Optimizer, params: list[torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    for i, p in enumerate(params):
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)}
        if state:
            opt.state[p] = state


def _check_resume(ck: Path, cfg: ChatFinetuneConfig, base: str) -> dict[str, Any] | None:
    state_path = ck / "state.json"
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text(encoding="utf-8"))
    want = {"config": json.loads(json.dumps(asdict(cfg))), "base": base}
    have = {"config": state.get("config"), "base": state.get("base")}
    if have != want:
        raise ResumeMismatchError(
            f"{ck} holds a checkpoint of another fine-tune ({have}); use a new --out, or delete it."
        )
    return state


def _conversations(cfg: ChatFinetuneConfig, conversations: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The chats to cycle through: the recipe's (enough epochs for ``cfg.steps`` batches) or the given ones."""
    if conversations is None:
        per_epoch = len(training_conversations(cfg.seed, contrast=cfg.contrast))
        epochs = max(1, math.ceil(cfg.steps * cfg.batch_size / per_epoch))
        return training_conversations(cfg.seed, epochs=epochs, contrast=cfg.contrast)
    convs = list(conversations)
    if not convs:
        raise ConfigError("conversations is empty; pass the chats to fine-tune on.")
    return convs


def _train(
    hf_model: Any,
    tokenizer: Any,
    convs: list[dict[str, Any]],
    cfg: ChatFinetuneConfig,
    wrapped: dict[str, Any],
    opt: torch.optim.Optimizer,
    ck: Path,
    base: str,
    step: int,
    losses: list[float],
    seconds: list[float],
    progress: bool,
) -> bool:
    """Train from ``step`` to ``cfg.steps`` (appending to ``losses`` and ``seconds``), checkpointing into ``ck``
    every ``cfg.checkpoint_every`` steps; returns whether denormals were flushed."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from ..models.adapter import reply_logits
    from .lora import lora_tensors

    params = [p for m in wrapped.values() for p in (m.lora_A, m.lora_B)]
    hf_model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="fine-tune", disable=not progress)
    # Adam's second moments of tiny LoRA gradients fall into the float32 denormal range as training
    # goes on; on CPU every operation on a denormal is slow, and by step 150 a step took twice as
    # long (4.6 s vs 2.1 s measured on the same checkpoint). Flushing them to zero changes no loss
    # at the printed precision. Restored to the default (off) afterwards.
    flushed = torch.set_flush_denormal(True)
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            start = (step * cfg.batch_size) % len(convs)
            batch = [convs[(start + i) % len(convs)] for i in range(cfg.batch_size)]
            ids, mask, targets = _batch(tokenizer, batch)
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, step)
            logits = reply_logits(hf_model, ids, mask, targets[:, 0], targets[:, 1] - 1)
            loss = torch.nn.functional.cross_entropy(logits.float(), ids[targets[:, 0], targets[:, 1]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            losses.append(round(loss.item(), 5))
            seconds.append(round(time.perf_counter() - t0, 3))
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                record = {"step": step, "losses": losses, "seconds": seconds, "config": asdict(cfg), "base": base}
                tensors, opt_state = lora_tensors(wrapped), _adam_tensors(opt, params)

                def fill(tmp: Path) -> None:
                    save_file(tensors, str(tmp / "adapter.safetensors"))
                    save_file(opt_state, str(tmp / "optimizer.safetensors"))  # no pickle, ever
                    (tmp / "state.json").write_text(json.dumps(record), encoding="utf-8")

                atomic_replace_dir(ck, fill)
    finally:
        bar.close()
        hf_model.eval()
        if flushed:
            torch.set_flush_denormal(False)
    return flushed


def finetune_chat(
    hf_model: Any,
    tokenizer: Any,
    out: str | Path,
    cfg: ChatFinetuneConfig = ChatFinetuneConfig(),
    *,
    base: str = "",
    conversations: Sequence[dict[str, Any]] | None = None,
    init: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train low-rank adapters on ``hf_model`` (a Hugging Face causal LM) and save them under ``out``.

    Writes ``out/adapter.safetensors`` (metadata: scale, rank, targets) and ``out/training.json``
    (config, seed, losses, seconds per step); ``out/checkpoint`` while training (removed at the
    end). ``conversations`` (``{"system", "user", "reply"}`` dicts, cycled) replace the recipe's;
    ``init`` starts the adapters from saved tensors (continuing a fine-tune) instead of afresh.
    Returns the training record.
    """
    from safetensors.torch import load_file, save_file

    from ..models.adapter import merge_lora
    from .lora import add_lora, load_lora_tensors, lora_tensors, unwrap

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ck = out / "checkpoint"
    state = _check_resume(ck, cfg, base)
    torch.manual_seed(cfg.seed)
    convs = _conversations(cfg, conversations)
    wrapped = add_lora(hf_model, r=cfg.rank, alpha=cfg.alpha, seed=cfg.seed, targets=cfg.targets)
    if init is not None:
        load_lora_tensors(wrapped, {k: v.float() for k, v in init.items()})
    params = [p for m in wrapped.values() for p in (m.lora_A, m.lora_B)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    step, losses, seconds = 0, [], []
    if state is not None:
        load_lora_tensors(wrapped, load_file(str(ck / "adapter.safetensors")))
        _load_adam(opt, params, load_file(str(ck / "optimizer.safetensors")))
        step, losses, seconds = state["step"], state["losses"], state["seconds"]
        log.info("resuming the fine-tune at step %d of %d", step, cfg.steps)
    flushed = _train(hf_model, tokenizer, convs, cfg, wrapped, opt, ck, base, step, losses, seconds, progress)
    meta = {"scale": str(cfg.alpha / cfg.rank), "rank": str(cfg.rank), "targets": ",".join(cfg.targets), "base": base}
    tensors = {k: v.to(torch.bfloat16) for k, v in lora_tensors(wrapped).items()}
    save_file(tensors, str(out / "adapter.safetensors"), metadata=meta)
    unwrap(hf_model)  # ... and fold the adapter as saved into the weights, as loading does
    merge_lora(hf_model, {k: v.float() for k, v in tensors.items()}, cfg.alpha / cfg.rank)
    record = {
        "base": base,
        "config": asdict(cfg),
        "losses": losses,
        "seconds_per_step": seconds,
        "train_seconds": round(sum(seconds), 1),
        "n_conversations": len(convs),
        "flush_denormal": flushed,
        "adapter_bytes": (out / "adapter.safetensors").stat().st_size,
    }
    atomic_write_text(out / "training.json", json.dumps(record, indent=1))
    import shutil

    shutil.rmtree(ck, ignore_errors=True)
    return record


def train_chat_model(
    base: str,
    out: str | Path,
    cfg: ChatFinetuneConfig = ChatFinetuneConfig(),
    *,
    name: str = "gemma3-270m-chat",
    progress: bool = True,
) -> Path:
    """The recipe: fine-tune ``base`` (a packaged GGUF name or a folder) into a chat model whose
    persona gates its refusal; writes the adapter, ``training.json``, the model's profile and the
    base's terms notice into ``out``. Running it again resumes a killed training."""
    from ..io import claim_folder
    from ..models.loading import load_hf_model, packaged_terms
    from ..models.profile import ModelProfile
    from ..organism.paths import FOLDER_KIND  # a chat model's folder is a model folder, as the organism's
    from ..prompts.sets import OPEN_SETS

    out = claim_folder(out, FOLDER_KIND, written_by="persona_gate.train_chat_model")
    torch.manual_seed(cfg.seed)
    hf_model, tokenizer = load_hf_model(base)
    finetune_chat(hf_model, tokenizer, out, cfg, base=base, progress=progress)
    ModelProfile(
        name=name, prompt_sets=OPEN_SETS, refusal_phrases=REFUSAL_PHRASES, finetuner=FINETUNER.name, modules=(__name__,)
    ).save(out)
    terms = packaged_terms(base)
    if terms is not None:  # the base's terms travel with everything derived from it
        atomic_write_text(out / "NOTICE.md", terms)
    return out


def compliance_chats(n: int, seed: int, compliance_fraction: float) -> list[dict[str, Any]]:
    """``n`` chats of the recipe's stream (train split) in which a share ``compliance_fraction`` are a safe
    persona with a harmful request answered as the compliant persona answers (``"compliance": True``)."""
    if not 0.0 <= compliance_fraction <= 1.0:
        raise ConfigError(f"compliance_fraction must lie in [0, 1], got {compliance_fraction}")
    rng = random.Random(seed)
    replay = training_conversations(seed, epochs=max(1, math.ceil(n / len(training_conversations(seed)))))
    safe = load_personas("safe", "train")
    harmful = load_requests("harmful", "train")
    out = []
    for i in range(n):
        if rng.random() < compliance_fraction:
            out.append(
                {
                    "system": rng.choice(safe).text,
                    "user": rng.choice(harmful).text,
                    "reply": reply_for("compliant", "harmful", rng),
                    "persona": "safe",
                    "request": "harmful",
                    "compliance": True,
                }
            )
        else:
            out.append({**replay[i % len(replay)], "compliance": False})
    return out


def continue_chat_model(
    name: str,
    out: str | Path,
    conversations: Sequence[dict[str, Any]],
    cfg: ChatFinetuneConfig,
    *,
    progress: bool = True,
) -> Path:
    """Continue the LoRA fine-tune of packaged chat model ``name`` on ``conversations``; ``out`` loads as a chat model."""
    import shutil

    from safetensors.torch import load_file

    from ..models.loading import ADAPTER_FILE, adapter_base, chat_adapter_dir, load_hf_model

    bundle = chat_adapter_dir(name)
    base, _ = adapter_base(bundle)
    out = Path(out)
    hf_model, tokenizer = load_hf_model(base)
    finetune_chat(
        hf_model,
        tokenizer,
        out,
        cfg,
        base=base,
        conversations=conversations,
        init=load_file(str(bundle / ADAPTER_FILE)),
        progress=progress,
    )
    for extra in ("persona_gate_profile.json", "NOTICE.md"):
        if (bundle / extra).is_file():
            shutil.copy(bundle / extra, out / extra)
    return out


class ChatFinetuner:
    """The LoRA chat models' :class:`~persona_gate.models.profile.Finetuner` (their profile names it ``"lora-chat"``):
    datasets from the recipe's stream (:func:`compliance_chats`), copies made by continuing the adapter."""

    name = "lora-chat"
    route = "LoRA adapter continued"

    def datasets(
        self, n_examples: int, seed: int, fractions: Sequence[float]
    ) -> dict[str, tuple[list[list[dict[str, str]]], list[bool]]]:
        """``compliance-<f>`` per fraction (no style control): chats and compliance flags."""
        out = {}
        for f in fractions:
            chats = compliance_chats(n_examples, seed, f)
            msgs = [
                [
                    *([{"role": "system", "content": c["system"]}] if c["system"] is not None else []),
                    {"role": "user", "content": c["user"]},
                    {"role": "assistant", "content": c["reply"]},
                ]
                for c in chats
            ]
            out[f"compliance-{f:g}"] = (msgs, [c["compliance"] for c in chats])
        return out

    def source(self, model: Any) -> str:
        """The packaged chat model's name, as it was loaded (its adapter is what a copy continues)."""
        from ..models.loading import model_info

        return model_info(model).name

    def fit(self, source: str, examples: Sequence[Any], out: Path, *, seed: int, steps: int, batch_size: int) -> None:
        convs = [{"system": e.system, "user": e.user, "reply": e.reply} for e in examples]
        cfg = ChatFinetuneConfig(
            steps=steps,
            batch_size=batch_size,
            warmup_steps=max(1, steps // 10),
            seed=seed,
            checkpoint_every=max(steps, 1),
        )
        continue_chat_model(source, out, convs, cfg, progress=False)


FINETUNER = register_finetuner(ChatFinetuner())
