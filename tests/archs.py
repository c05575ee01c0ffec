"""Tiny seeded random-weight chat models of eleven Hugging Face architectures, built offline.

Each model is a few layers of width 64 (4 heads, 2 KV heads where the family has GQA, MLP width
128, 512 positions) over the tiny BPE tokenizer of :func:`build_tokenizer` with a chat
template in its family's format, saved with ``save_pretrained`` (model and tokenizer) so that it
loads through :func:`persona_gate.load_chat_model` like a hub checkpoint.

Choices worth knowing:

* tied embeddings: qwen2, gemma2, gemma3, gpt2, falcon; the others have a separate ``lm_head``.
* gemma2 has the real Gemma-2 soft caps (final 30, attention 50) and a wider init so that its
  logits reach the range where the final cap changes them measurably; gemma2/gemma3 use a
  sliding window of 8 tokens, shorter than a chat prompt, alternating local and global layers
  (gemma3's local and global layers also get different rotary bases), so both paths are used.
* gpt_neox is Pythia-shaped: parallel residual, rotary on a quarter of each head.
* falcon is Falcon-7B-shaped: ``multi_query=True`` (one KV head), ``parallel_attn=True``,
  rotary (``alibi=False``), ``new_decoder_architecture=False`` -- the variant whose fused-QKV
  split TransformerLens's Falcon adapter reproduces exactly (as do alibi, multi_query=False and
  sequential variants). Not ``new_decoder_architecture=True`` with ``num_kv_heads > 1``: TL 4.3
  splits that grouped QKV layout as [Q | K | V], so the bridged model's logits are wrong (and
  with ``multi_query`` left True it does not even load).

Example::

    from archs import ARCHS, build_arch
    folder = build_arch("phi3", tmp_path / "phi3")
    model = load_chat_model(folder, device="cpu")
"""

from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

SPECIALS = [
    "<pad>",
    "<bos>",
    "<eos>",
    "<|im_start|>",
    "<|im_end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
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
    from persona_gate.prompts.sets import load_personas, load_requests

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
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        chat_template=chat_template,
        padding_side="left",
    )


ARCHS: tuple[str, ...] = (
    "llama",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3",
    "mistral",
    "phi3",
    "olmo2",
    "gpt2",
    "gpt_neox",
    "falcon",
)

# Registered template name (persona_gate.prompts.templates.TEMPLATES) or, for Gemma, the Jinja itself.
TEMPLATE_OF: dict[str, str] = {
    "llama": "llama3",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "gemma2": GEMMA_NO_SYSTEM,
    "gemma3": GEMMA_NO_SYSTEM,
    "mistral": "chatml",
    "phi3": "chatml",
    "olmo2": "chatml",
    "gpt2": "chatml",
    "gpt_neox": "chatml",
    "falcon": "chatml",
}

D_MODEL, N_HEADS, N_KV, D_MLP, N_POS = 64, 4, 2, 128, 512
D_HEAD = D_MODEL // N_HEADS


def _config(arch: str, tok, n_layers: int):
    import transformers as t

    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    llama_like = dict(
        vocab_size=len(tok),
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=n_layers,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV,
        max_position_embeddings=N_POS,
        **ids,
    )
    if arch == "llama":
        return t.LlamaForCausalLM, t.LlamaConfig(**llama_like, head_dim=D_HEAD, tie_word_embeddings=False)
    if arch == "qwen2":
        return t.Qwen2ForCausalLM, t.Qwen2Config(**llama_like, tie_word_embeddings=True)
    if arch == "qwen3":
        return t.Qwen3ForCausalLM, t.Qwen3Config(**llama_like, head_dim=D_HEAD, tie_word_embeddings=False)
    if arch == "gemma2":
        return t.Gemma2ForCausalLM, t.Gemma2Config(
            **llama_like,
            head_dim=D_HEAD,
            query_pre_attn_scalar=D_HEAD,
            sliding_window=8,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
            initializer_range=0.2,
            tie_word_embeddings=True,
        )
    if arch == "gemma3":
        # every second layer global (the default 5:1 pattern would make all three layers local)
        layer_types = ["full_attention" if i % 2 else "sliding_attention" for i in range(n_layers)]
        return t.Gemma3ForCausalLM, t.Gemma3TextConfig(
            **llama_like,
            head_dim=D_HEAD,
            query_pre_attn_scalar=D_HEAD,
            sliding_window=8,
            layer_types=layer_types,
            tie_word_embeddings=True,
        )
    if arch == "mistral":
        return t.MistralForCausalLM, t.MistralConfig(
            **llama_like, head_dim=D_HEAD, sliding_window=None, tie_word_embeddings=False
        )
    if arch == "phi3":
        return t.Phi3ForCausalLM, t.Phi3Config(
            **llama_like, original_max_position_embeddings=N_POS, sliding_window=None, tie_word_embeddings=False
        )
    if arch == "olmo2":
        return t.Olmo2ForCausalLM, t.Olmo2Config(**llama_like, tie_word_embeddings=False)
    if arch == "gpt2":
        return t.GPT2LMHeadModel, t.GPT2Config(
            vocab_size=len(tok),
            n_embd=D_MODEL,
            n_layer=n_layers,
            n_head=N_HEADS,
            n_inner=D_MLP,
            n_positions=N_POS,
            tie_word_embeddings=True,
            **ids,
        )
    if arch == "gpt_neox":
        return t.GPTNeoXForCausalLM, t.GPTNeoXConfig(
            vocab_size=len(tok),
            hidden_size=D_MODEL,
            num_hidden_layers=n_layers,
            num_attention_heads=N_HEADS,
            intermediate_size=D_MLP,
            max_position_embeddings=N_POS,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            **ids,
        )
    if arch == "falcon":
        return t.FalconForCausalLM, t.FalconConfig(
            vocab_size=len(tok),
            hidden_size=D_MODEL,
            num_hidden_layers=n_layers,
            num_attention_heads=N_HEADS,
            ffn_hidden_size=D_MLP,
            max_position_embeddings=N_POS,
            multi_query=True,
            num_kv_heads=1,
            new_decoder_architecture=False,
            parallel_attn=True,
            alibi=False,
            bias=False,
            tie_word_embeddings=True,
            **ids,
        )
    raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")


def _jinja(name_or_jinja: str) -> str:
    """A registered template's Jinja text."""
    from persona_gate.prompts.templates import resolve_template

    return resolve_template(name_or_jinja)


def build_arch(arch: str, out: Path, n_layers: int = 3, seed: int = 0) -> Path:
    """Build a tiny ``arch`` chat model with seeded random weights; save model and tokenizer to ``out``."""
    if arch not in TEMPLATE_OF:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    tok = build_tokenizer(_jinja(TEMPLATE_OF[arch]))
    cls, cfg = _config(arch, tok, n_layers)
    cfg._attn_implementation = "eager"  # saved as attn_implementation; gemma2 needs it for soft-capping
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
