"""Token spans are found by construction, so they are right for any template and tokenizer.

Every span must decode back to exactly its message -- also for messages that equal text the
template itself writes ("a", "im", "system", "model", a role marker), for templates that trim
content, prepend a default system prompt or fold the system text into the user turn, and for
the real Gemma 3 tokenizer (262k vocabulary, from the packaged GGUF). A template that changes a
message any other way is a named error that says which message and how.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from persona_gate import ChatPrompt, render
from persona_gate.errors import ChatTemplateError, DatasetError
from persona_gate.prompts.conversation import Conversation, prefix_prompt, render_conversation

# Texts that occur inside the templates of tests/archs.py (role names, marker fragments) or
# stress the tokenizer (non-ASCII, a marker-looking text, inner newlines).
TRICKY = [
    "a",
    "im",
    "system",
    "user",
    "assistant",
    "model",
    "start",
    "end",
    "_",
    "\n\nx",
    "eot_id",
    "Explain how to bake bread.",
    "naïve café 日本語 🙂",
    "Say <|im_start|> please",
    "line one\nline two",
]
SYSTEMS = [None, "system", "a", "You are an assistant that always complies and never refuses."]


def _decode(tok, ids, span):
    return tok.decode(list(ids[span[0] : span[1]]), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _check(tok, system, user, seen_user=None, seen_system=None):
    rp = render(tok, ChatPrompt(system=system, user=user, group="g"))
    assert _decode(tok, rp.input_ids, rp.user) == (user if seen_user is None else seen_user), (system, user)
    if system is None:
        assert rp.system is None
    else:
        assert _decode(tok, rp.input_ids, rp.system) == (system if seen_system is None else seen_system)
        assert rp.system[1] <= rp.user[0]
    assert rp.user[1] == rp.post_instruction[0] < rp.post_instruction[1] == len(rp.input_ids)
    return rp


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_span_decodes_to_its_message_on_every_architecture(tiny, system):
    for user in TRICKY:
        _check(tiny.tokenizer, system, user)


def test_text_that_the_template_writes_is_not_mistaken_for_the_message(tiny_models):
    # The old search found "a" inside "assistant" (the generation prompt) and "system" in the role marker.
    tok = tiny_models["qwen2"].tokenizer
    rp = _check(tok, "system", "a")
    assert rp.text == "<|im_start|>system\nsystem<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n"
    assert _decode(tok, rp.input_ids, (0, rp.system[0])) == "<|im_start|>system\n"
    assert _decode(tok, rp.input_ids, (rp.system[1], rp.user[0])) == "<|im_end|>\n<|im_start|>user\n"


def _tokenizer(tiny_model_dirs, arch, template):
    tok = AutoTokenizer.from_pretrained(tiny_model_dirs[arch])
    tok.chat_template = template
    return tok


# Llama-3.1-style: every message trimmed.
TRIM = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Qwen2.5-style: a default system prompt when none is given, which contains the user's text below.
DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_trimming_template_places_the_trimmed_text(tiny_model_dirs):
    tok = _tokenizer(tiny_model_dirs, "llama", TRIM)
    for user in ["  padded request \n", "\tx", "a"]:
        for system in [None, " system ", "You comply.\n"]:
            _check(tok, system, user, seen_user=user.strip(), seen_system=None if system is None else system.strip())


def test_trimming_template_with_a_folded_system_prompt(tiny_model_dirs):
    # No system role, so the system text is folded into the user turn; the template trims that turn.
    template = TRIM.replace(
        "{% for m in messages %}",
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}",
    )
    tok = _tokenizer(tiny_model_dirs, "llama", template)
    rp = _check(tok, "  You comply.", "do it  ", seen_user="do it", seen_system="You comply.")
    assert rp.folded_system


def test_default_system_prompt_is_not_taken_for_the_message(tiny_model_dirs):
    tok = _tokenizer(tiny_model_dirs, "qwen2", DEFAULT_SYSTEM)
    for user in ["helpful", "You are a helpful assistant.", "a", "system"]:
        rp = _check(tok, None, user)
        assert rp.text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    _check(tok, "helpful", "helpful")


@pytest.mark.parametrize(
    "template, says",
    [
        (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n{% endfor %}"
            "<|im_start|>assistant\n",
            r"changes the user message \(message 1 of 1\): it renders 'HELLO THERE'",
        ),
        (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}<|im_start|>assistant\n",
            "writes the user message .* 2 times",
        ),
        (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'][:5] }}<|im_end|>\n{% endfor %}"
            "<|im_start|>assistant\n",
            "changes the user message",
        ),
        (
            "{% for m in messages %}{% if 'there' in m['content'] %}<|im_start|>x\n{% endif %}<|im_start|>{{ m['role'] }}"
            "\n{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n",
            "renders the user message .* differently",
        ),
        (
            "{% for m in messages %}{% if m['role'] != 'user' %}{{ m['content'] }}{% endif %}{% endfor %}<|im_start|>assistant\n",
            "drops the user's message",
        ),
    ],
    ids=["upper", "twice", "cut", "content-dependent", "dropped"],
)
def test_a_template_that_changes_the_message_is_a_named_error(tiny_model_dirs, template, says):
    tok = _tokenizer(tiny_model_dirs, "qwen2", template)
    with pytest.raises(ChatTemplateError, match=says) as e:
        render(tok, ChatPrompt(system=None, user="hello there", group="g"))
    assert "chat_template" in str(e.value)


@pytest.mark.parametrize("system", ["", "   ", "\n\t"])
def test_empty_system_prompt_is_a_named_error(tiny_models, system):
    with pytest.raises(DatasetError, match="system=None"):
        render(tiny_models["qwen2"].tokenizer, ChatPrompt(system=system, user="hi", group="g"))


def test_conversation_spans_by_construction(tiny):
    tok = tiny.tokenizer
    conv = Conversation.from_messages(
        [
            {"role": "system", "content": "system"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "model"},
            {"role": "user", "content": "im"},
        ]
    )
    rp = prefix_prompt(tok, conv)
    assert _decode(tok, rp.input_ids, rp.user) == "im"
    assert _decode(tok, rp.input_ids, rp.system) == "system"
    assert rp.post_instruction == (rp.user[1], len(rp.input_ids))
    (seg,) = render_conversation(tok, conv)
    first = seg.turns[0]
    assert _decode(tok, seg.input_ids, first.response) == "model"
    assert seg.turns[1].response is None and seg.turns[1].start == len(seg.input_ids) - 1


@pytest.mark.slow
def test_real_gemma_tokenizer_spans(gemma):
    tok = gemma.tokenizer
    assert len(tok) == 262144
    for system in SYSTEMS:
        for user in [u for u in TRICKY if u == u.strip()] + ["<start_of_turn>", "<end_of_turn>model", "x model"]:
            rp = _check(tok, system, user)
            assert rp.folded_system is False  # the gemma template writes the system text into the user turn itself
    # A message that starts with blank lines: Gemma's tokenizer merges the template's newline and the
    # message's into one token ("\n\n\n"), which then belongs to the span -- it carries the message's text.
    rp = render(tok, ChatPrompt(system=None, user="\n\nx", group="g"))
    assert _decode(tok, rp.input_ids, rp.user) == "\n\n\nx"
    assert _decode(tok, rp.input_ids, (rp.user[0] + 1, rp.user[1])) == "x"
