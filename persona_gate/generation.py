"""Greedy generation in batches, under whatever interventions are active.

Prompts are rendered with the chat template, length-sorted, left-padded and decoded greedily.
On a ``TransformerBridge`` the wrapped Hugging Face model's ``generate`` is used: its layers are
the bridge's blocks, so every hook (and every :func:`persona_gate.interventions.apply`) fires
during generation, and Hugging Face's KV cache does the bookkeeping. The batch's attention mask
is published (:mod:`persona_gate.layout`) so interventions leave pads alone and can tell prompt
from generated tokens. Other models fall back to a plain uncached argmax loop.

With and without the KV cache the greedy tokens are identical (tested under every intervention).

Example::

    with apply(model, Steer(persona, alpha=4.0, layers=[2])):
        outs = generate(model, prompts, max_new_tokens=24)
    outs[0].text
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .activations import as_rendered, check_context, padded_batches
from .chat import RenderedPrompt
from .layout import prompt_layout
from .errors import ConfigError
from .models import model_device
from .prompts import ChatPrompt


@dataclass(frozen=True)
class Generation:
    """One prompt's greedy reply: decoded text (special tokens dropped) and the new token ids."""

    prompt: ChatPrompt
    text: str
    token_ids: tuple[int, ...]


def _eos_ids(model: Any) -> list[int]:
    ids: set[int] = set()
    tok_eos = getattr(model.tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(int(tok_eos))
    gen_cfg = getattr(getattr(model, "original_model", None), "generation_config", None)
    cfg_eos = getattr(gen_cfg, "eos_token_id", None)
    if cfg_eos is not None:
        ids.update(int(i) for i in (cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos]))
    return sorted(ids)


def _hf_generate(hf: Any, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, use_kv_cache: bool, pad_id: int, eos: list[int]) -> torch.Tensor:
    from transformers import GenerationConfig

    # A fresh config: the checkpoint's own (sampling, repetition penalty ...) must not leak in.
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=use_kv_cache,
        pad_token_id=pad_id,
        eos_token_id=eos or None,
    )
    return hf.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)


def _naive_generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, pad_id: int, eos: list[int]) -> torch.Tensor:
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = model(ids, attention_mask=mask)
        nxt = logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        done |= torch.isin(nxt, torch.tensor(eos, device=ids.device)) if eos else done
        if done.all():
            break
    return ids


def generate(
    model: Any,
    prompts: Sequence[ChatPrompt | RenderedPrompt],
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
    eos = _eos_ids(model)
    hf = getattr(model, "original_model", None)
    out: list[Generation | None] = [None] * len(rendered)
    bar = tqdm(total=len(rendered), desc="generating", unit="prompt", disable=not progress)
    try:
        for pb in padded_batches(rendered, batch_size, pad_id):
            ids, mask = pb.input_ids.to(device), pb.attention_mask.to(device)
            with torch.no_grad(), prompt_layout(pb.attention_mask):
                if hf is not None:
                    seqs = _hf_generate(hf, ids, mask, max_new_tokens, use_kv_cache, pad_id, eos)
                else:
                    seqs = _naive_generate(model, ids, mask, max_new_tokens, pad_id, eos)
            new = seqs[:, ids.shape[1] :].cpu()
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
