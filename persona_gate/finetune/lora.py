"""Low-rank adapters for fine-tuning a real model on CPU, without extra dependencies.

``add_lora(model)`` wraps the attention and MLP projections of every decoder layer with a
trainable low-rank update ``W x + (alpha / r) * B (A x)`` (``A``: r x in, Gaussian; ``B``: out x
r, zeros, so training starts at the base model) and freezes everything else. ``lora_tensors``
returns the adapter as plain tensors (``<module>.lora_A`` / ``<module>.lora_B``) that
:func:`persona_gate.models.adapter.merge_lora` folds into a base model's weights at load time --
loading needs neither this module nor peft.

Example::

    mods = add_lora(hf_model, r=16, alpha=32, seed=0)
    ...train...
    save_file(lora_tensors(mods), "adapter.safetensors", metadata={"scale": str(32 / 16)})
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import LORA_TARGETS as TARGETS  # one list, shared with the recipe's config


class LoRALinear(nn.Module):
    """``base(x) + scale * (x @ A.T) @ B.T`` with ``base`` frozen."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / r
        a = torch.randn(r, base.in_features, generator=generator) / math.sqrt(base.in_features)
        self.lora_A = nn.Parameter(a.to(base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale


def add_lora(
    model: nn.Module, *, r: int = 16, alpha: float = 32.0, seed: int = 0, targets: tuple[str, ...] = TARGETS
) -> dict[str, LoRALinear]:
    """Wrap every ``nn.Linear`` whose name ends in one of ``targets``; freeze all other parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    wrapped: dict[str, LoRALinear] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and child_name in targets:
                lora = LoRALinear(child, r, alpha, g)
                setattr(module, child_name, lora)
                wrapped[full] = lora
    if not wrapped:
        raise ValueError(f"no linear layer named one of {targets} in {type(model).__name__}")
    return wrapped


def lora_tensors(wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """The adapter as plain tensors, named after the wrapped module."""
    out = {}
    for name, m in wrapped.items():
        out[f"{name}.lora_A"] = m.lora_A.detach().clone().contiguous()
        out[f"{name}.lora_B"] = m.lora_B.detach().clone().contiguous()
    return out


def load_lora_tensors(wrapped: dict[str, LoRALinear], tensors: dict[str, torch.Tensor]) -> None:
    """Put saved adapter tensors back into wrapped modules (resuming a training)."""
    with torch.no_grad():
        for name, m in wrapped.items():
            m.lora_A.copy_(tensors[f"{name}.lora_A"])
            m.lora_B.copy_(tensors[f"{name}.lora_B"])


def unwrap(model: nn.Module) -> None:
    """Replace every LoRALinear by its base linear layer (undo :func:`add_lora` without merging)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.base)
