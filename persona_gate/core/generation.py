"""Greedy generation in batches, under whatever interventions are active.

Prompts are rendered with the chat template, length-sorted, left-padded and decoded greedily.
Decoding goes through the adapter (:func:`persona_gate.models.adapter.greedy_generate`): on a
``TransformerBridge`` the wrapped Hugging Face model's ``generate``, whose layers are the bridge's
blocks, so every hook (and every :func:`persona_gate.core.interventions.apply`) fires during
generation and Hugging Face's KV cache does the bookkeeping. The batch's attention mask
is published (:mod:`persona_gate.core.prompt_layout`) so interventions leave pads alone and can tell prompt
from generated tokens. Other models fall back to a plain uncached argmax loop.

With and without the KV cache the greedy tokens are identical (tested under every intervention).
A batch that runs out of memory is decoded again at half the size, down to one prompt
(:func:`~persona_gate.core.activations.run_batches`); the replies equal those of a run at that size.

Example::

    with apply(model, Steer(persona, alpha=4.0, layers=[2])):
        outs = generate(model, prompts, max_new_tokens=24)
    outs[0].text
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, ConversationError
from ..models.adapter import eos_ids, greedy_generate
from ..models.loading import model_device
from ..models.protocol import ChatModel
from ..prompts.chat import RenderedPrompt
from ..prompts.conversation import Conversation, prefix_prompt
from ..prompts.sets import ChatPrompt
from .activations import PaddedBatch, as_rendered, check_context, run_batches
from .prompt_layout import prompt_layout


@dataclass(frozen=True)
class Generation:
    """One prompt's greedy reply: decoded text (special tokens dropped) and the new token ids."""

    prompt: ChatPrompt
    text: str
    token_ids: tuple[int, ...]


def generate(
    model: ChatModel,
    prompts: Sequence[ChatPrompt | RenderedPrompt | str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    use_kv_cache: bool = True,
    progress: bool = True,
) -> list[Generation]:
    """Greedy replies for ``prompts`` (in prompt order)."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}; pass a positive number of tokens.")
    rendered = as_rendered(model, prompts)
    check_context(model, rendered)
    device = model_device(model)
    pad_id = model.tokenizer.pad_token_id
    eos = eos_ids(model)
    out: list[Generation | None] = [None] * len(rendered)

    def step(pb: PaddedBatch) -> torch.Tensor:
        ids, mask = pb.input_ids.to(device), pb.attention_mask.to(device)
        with torch.no_grad(), prompt_layout(pb.attention_mask):
            seqs = greedy_generate(model, ids, mask, max_new_tokens, use_kv_cache=use_kv_cache, pad_id=pad_id, eos=eos)
        return seqs[:, ids.shape[1] :].cpu()

    bar = tqdm(total=len(rendered), desc="generating", unit="prompt", disable=not progress)
    try:
        for pb, new in run_batches(model, rendered, batch_size, step, what="generation", key="generation"):
            for b, i in enumerate(pb.indices):
                toks = new[b].tolist()
                cut = next((k + 1 for k, t in enumerate(toks) if t in eos), len(toks))
                toks = [t for t in toks[:cut] if t != pad_id or pad_id in eos]
                out[i] = Generation(
                    prompt=rendered[i].prompt,
                    text=model.tokenizer.decode(toks, skip_special_tokens=True).strip(),
                    token_ids=tuple(toks),
                )
            bar.update(len(pb.indices))
    finally:
        bar.close()
    return out  # type: ignore[return-value]  # every index was filled by exactly one batch


def converse_many(
    model: ChatModel,
    scripts: Sequence[tuple[str | None, Sequence[str]]],
    *,
    max_new_tokens: int = 40,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
) -> list[Conversation]:
    """Play ``(system, [user message, ...])`` scripts: the model answers each user message greedily,
    turn by turn, all scripts of one turn in one batch."""
    if names is not None and len(names) != len(scripts):
        raise ConfigError(f"got {len(names)} names for {len(scripts)} scripts; give one name per script.")
    convs = [[] if system is None else [{"role": "system", "content": system}] for system, _ in scripts]
    for t in range(max((len(users) for _, users in scripts), default=0)):
        active = [i for i, (_, users) in enumerate(scripts) if t < len(users)]
        for i in active:
            convs[i].append({"role": "user", "content": scripts[i][1][t]})
        prompts = [prefix_prompt(model.tokenizer, Conversation.from_messages(convs[i])) for i in active]
        replies = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
        for i, g in zip(active, replies):
            convs[i].append({"role": "assistant", "content": g.text})
    return [Conversation.from_messages(m, name="" if names is None else names[i]) for i, m in enumerate(convs)]


def converse(
    model: ChatModel, users: Sequence[str], *, system: str | None = None, max_new_tokens: int = 40, name: str = ""
) -> Conversation:
    """A conversation in which the model answers each of ``users`` in turn (greedy replies)."""
    if isinstance(users, str):
        raise ConversationError("pass the user messages as a list of strings, one per turn.")
    (conv,) = converse_many(model, [(system, users)], max_new_tokens=max_new_tokens, names=[name])
    return conv
