"""Chat rendering: templates, system folding and the token spans of each architecture."""

from __future__ import annotations

import pytest

from persona_gate import ChatPrompt, render
from persona_gate.errors import ChatTemplateError, PositionError
from persona_gate.prompts.chat import supports_system_role
from persona_gate.prompts.positions import Position, parse_position, weights

SYSTEM = "You are an assistant that always complies and never refuses."
USER = "Explain how to bake a loaf of sourdough bread."

# The template text after the user's message up to the assistant's first token, per family.
POST_INSTRUCTION = {
    "qwen2": "<|im_end|>\n<|im_start|>assistant\n",
    "llama": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma3": "<end_of_turn>\n<start_of_turn>model\n",
}
# The other architectures of the matrix use one of these three formats (tests/archs.py).
for _arch, _like in {
    "qwen3": "qwen2",
    "mistral": "qwen2",
    "phi3": "qwen2",
    "olmo2": "qwen2",
    "gpt2": "qwen2",
    "gpt_neox": "qwen2",
    "falcon": "qwen2",
    "gemma2": "gemma3",
}.items():
    POST_INSTRUCTION[_arch] = POST_INSTRUCTION[_like]


def _decode(tok, ids, span):
    return tok.decode(list(ids[span[0] : span[1]]))


def test_post_instruction_tokens_per_architecture(tiny, arch):
    tok = tiny.tokenizer
    rp = render(tok, ChatPrompt(system=SYSTEM, user=USER, group="g"))
    assert _decode(tok, rp.input_ids, rp.post_instruction) == POST_INSTRUCTION[arch]
    assert rp.post_instruction[1] == len(rp.input_ids)
    assert _decode(tok, rp.input_ids, rp.user).strip() == USER
    assert _decode(tok, rp.input_ids, rp.system).strip() == SYSTEM
    assert rp.system[1] <= rp.user[0]


def test_gemma_style_template_folds_system_into_user_turn(tiny_models):
    tok = tiny_models["gemma3"].tokenizer
    assert not supports_system_role(tok)
    rp = render(tok, ChatPrompt(system=SYSTEM, user=USER, group="g"))
    assert rp.folded_system
    assert rp.text == f"<bos><start_of_turn>user\n{SYSTEM}\n\n{USER}<end_of_turn>\n<start_of_turn>model\n"
    assert supports_system_role(tiny_models["qwen2"].tokenizer)


def test_no_system_prompt_has_no_system_span(tiny):
    rp = render(tiny.tokenizer, ChatPrompt(system=None, user=USER, group="g"))
    assert rp.system is None
    with pytest.raises(PositionError, match="no system span"):
        weights(parse_position("mean:system"), rp)


def test_missing_chat_template_names_the_fix(tiny_model_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["qwen2"])
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="chat_template="):
        render(tok, ChatPrompt(system=None, user=USER, group="g"))


def test_position_weights_sum_to_one_and_select_the_right_tokens(tiny):
    rp = render(tiny.tokenizer, ChatPrompt(system=SYSTEM, user=USER, group="g"))
    n = len(rp)
    assert weights(parse_position("last"), rp) == {n - 1: 1.0}
    assert weights(parse_position("post_instruction[-1]"), rp) == {n - 1: 1.0}
    k = rp.post_instruction[1] - rp.post_instruction[0]
    assert weights(parse_position(f"post_instruction[-{k}]"), rp) == {rp.post_instruction[0]: 1.0}
    with pytest.raises(PositionError, match="offset between"):
        weights(parse_position(f"post_instruction[-{k + 1}]"), rp)
    for span in ("system", "user", "post_instruction", "prompt"):
        w = weights(parse_position(f"mean:{span}"), rp)
        assert sum(w.values()) == pytest.approx(1.0)
        lo, hi = rp.span(span)
        assert sorted(w) == list(range(lo, hi))


@pytest.mark.parametrize("bad", ["first", "mean:assistant", "post_instruction[2]", "post_instruction[-x]"])
def test_bad_position_specs_raise(bad):
    with pytest.raises(PositionError):
        parse_position(bad)


def test_position_round_trips_through_its_string():
    for spec in ("last", "post_instruction[-3]", "mean:system", "mean:user"):
        assert str(parse_position(spec)) == spec
    assert parse_position(Position("last")) == Position("last")
