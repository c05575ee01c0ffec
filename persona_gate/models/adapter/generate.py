"""Generation: greedy decoding through the wrapped model's own ``generate``, hooks and all.

:func:`greedy_generate` decodes through the wrapped model's ``generate`` (its layers are the
bridge's blocks, so every hook fires) with a fresh greedy config and the KV cache on or off;
models without one fall back to an uncached argmax loop.

Example::

    seqs = greedy_generate(model, ids, mask, 32, use_kv_cache=True, pad_id=pad, eos=eos_ids(model))
    new = seqs[:, ids.shape[1]:]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..protocol import ChatModel
from .support import wrapped_model


def greedy_generate(
    model: ChatModel, ids: Tensor, mask: Tensor, max_new_tokens: int, *, use_kv_cache: bool, pad_id: int, eos: list[int]
) -> Tensor:
    """Prompt plus greedy continuation ``[batch, prompt + new]`` (left-padded prompts)."""
    hf = wrapped_model(model)
    if hf is not None and hasattr(hf, "generate"):
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
    return _argmax_loop(model, ids, mask, max_new_tokens, pad_id, eos)


def _argmax_loop(
    model: ChatModel, ids: Tensor, mask: Tensor, max_new_tokens: int, pad_id: int, eos: list[int]
) -> Tensor:
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
