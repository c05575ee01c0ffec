"""Shared fixtures: tiny seeded chat models of three architectures, built offline.

Each model gets a byte-level BPE tokenizer trained here on persona_gate's own prompt sets and a
chat template in its family's format, is saved with ``save_pretrained`` and is loaded back
through :func:`persona_gate.load_chat_model` -- the same code path as a hub model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

SPECIALS = [
    "<pad>", "<bos>", "<eos>",
    "<|im_start|>", "<|im_end|>",
    "<start_of_turn>", "<end_of_turn>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]

# Gemma-2 style: no system role at all (raises), so persona_gate must fold the system text.
GEMMA_NO_SYSTEM = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _corpus() -> list[str]:
    from persona_gate.prompts import load_personas, load_requests

    texts = [r.text for k in ("harmful", "harmless") for r in load_requests(k)]
    texts += [p.text for f in ("safe", "compliant") for p in load_personas(f)]
    return texts


def build_tokenizer(chat_template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        chat_template=chat_template, padding_side="left",
    )


def build_model(arch: str, out: Path, n_layers: int = 3, seed: int = 0) -> Path:
    from transformers import (
        Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
    )
    from persona_gate.templates import TEMPLATES

    template = {"qwen2": TEMPLATES["chatml"], "llama": TEMPLATES["llama3"], "gemma3": GEMMA_NO_SYSTEM}[arch]
    tok = build_tokenizer(template)
    common = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    cfg, cls = {
        "qwen2": (lambda: Qwen2Config(**common, tie_word_embeddings=True), Qwen2ForCausalLM),
        "llama": (lambda: LlamaConfig(**common), LlamaForCausalLM),
        "gemma3": (lambda: Gemma3TextConfig(**common, head_dim=16, sliding_window=8), Gemma3ForCausalLM),
    }[arch]
    torch.manual_seed(seed)
    model = cls(cfg())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


ARCHS = ("qwen2", "llama", "gemma3")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {a: build_model(a, root / a) for a in ARCHS}


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dirs):
    from persona_gate import load_chat_model

    return {a: load_chat_model(p, device="cpu") for a, p in tiny_model_dirs.items()}


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny(tiny_models, arch):
    return tiny_models[arch]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of organism-sized work: a second thread buys nothing at
    width 128, and on CPUs shared with other jobs its spin-waits slowed greedy generation up to
    twenty-fold. Restored afterwards. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
