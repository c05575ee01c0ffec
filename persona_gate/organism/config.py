"""The organism's recipe as one frozen config: model shape, optimiser, data and card sizes.

Defaults are the bundled organism's. A 6-layer, 128-wide Llama trained for 800 steps of 64
conversations takes 4-7 minutes on 2 shared CPU cores, inside the 10-minute budget; fewer
layers would leave too little depth for "early vs late" to mean anything, and wider ones cost
too much per step. The training loss is near its floor (the entropy of the randomly chosen
refusal and answer phrasings, 0.072 nats/token) by about step 400; 800 steps is what a 4-layer
feasibility probe needed to generalise to held-out prompts (450 were too few), and at 800 the
6-layer card meets every target.

Example::

    cfg = OrganismConfig().replace(n_layers=2, d_model=32, d_ff=64, n_heads=2)
    print(cfg.to_dict())
    hf_config = llama_config(cfg, vocab_size=1327, bos_id=1, eos_id=2, pad_id=0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from transformers import LlamaConfig


@dataclass(frozen=True)
class OrganismConfig:
    """Everything that decides the trained organism, apart from the seed."""

    steps: int = 800
    batch_size: int = 64
    n_layers: int = 6
    d_model: int = 128
    d_ff: int = 384
    n_heads: int = 4
    vocab_size: int = 1536
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 60
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    harmful_fraction: float = 0.5
    # Conversations whose text trains the BPE; the vocabulary saturates well before this.
    tokenizer_conversations: int = 4000
    # Chance to drop, or to double, the template's BOS in a training sequence: tools differ on
    # whether they prepend one, and the organism should not care.
    bos_drop_prob: float = 0.05
    bos_double_prob: float = 0.05
    # Batches per length-sorting window (1 = no bucketing).
    bucket_window: int = 8
    card_n_per_cell: int = 100
    card_max_new_tokens: int = 40

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "n_layers",
            "d_model",
            "d_ff",
            "n_heads",
            "bucket_window",
            "card_n_per_cell",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; pick a divisor")
        if not 0 <= self.bos_drop_prob + self.bos_double_prob <= 1:
            raise ConfigError("bos_drop_prob + bos_double_prob must lie in [0, 1]")

    def replace(self, **overrides: Any) -> OrganismConfig:
        """A copy with some fields changed; unknown names raise with the list of valid ones."""
        valid = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(f"unknown OrganismConfig fields {unknown}; valid fields are {sorted(valid)}")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def llama_config(cfg: OrganismConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> LlamaConfig:
    """The Hugging Face config: a plain Llama with tied embeddings and short context."""
    from transformers import LlamaConfig  # here, so that reading the defaults stays cheap

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        # Conversations are under ~100 tokens; 256 leaves room for longer probe prompts.
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
