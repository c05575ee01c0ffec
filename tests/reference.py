"""Independent reference computations: plain Hugging Face, no TransformerLens, no persona_gate maths."""

from __future__ import annotations

import torch


def hf_reference(model_dir, rendered):
    """Per-prompt hidden states ``[n_layers+1, seq, d]`` from a plain HF forward, one prompt at a time."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)
    hf.eval()
    out = []
    with torch.no_grad():
        for rp in rendered:
            ids = torch.tensor([rp.input_ids])
            out.append(torch.stack(hf(ids, output_hidden_states=True).hidden_states)[:, 0])
    return out
