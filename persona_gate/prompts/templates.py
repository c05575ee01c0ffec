"""Named chat templates for tokenizers that ship none (base models, GGUF files).

Model-specific knowledge lives here, declaratively: a name, the Jinja text, and whether the
format has a system role. A template given by name or as Jinja to
:func:`persona_gate.load_chat_model` is installed on the tokenizer; a tokenizer's own template
always wins when none is given.

The texts are written for persona_gate from each format's public description (turn markers
only), not copied from any tokenizer config.

Example::

    tok.chat_template = resolve_template("gemma")
    tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                            add_generation_prompt=True)
"""

from __future__ import annotations

import hashlib

from ..errors import ChatTemplateError

# ChatML (Qwen, many small chat models): system, user and assistant turns between markers.
_CHATML = (
    "{% for m in messages %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Gemma: only user and model turns; a system message is folded into the first user turn,
# separated by a blank line, which is how Gemma's own instruction format carries it.
_GEMMA = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
    "{% else %}"
    "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n"
    "{% if role == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ m['content'] }}<end_of_turn>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Llama 3 header format.
_LLAMA3 = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

TEMPLATES: dict[str, str] = {"chatml": _CHATML, "gemma": _GEMMA, "llama3": _LLAMA3}


def resolve_template(name_or_jinja: str) -> str:
    """A registered template by name, or the argument itself when it is Jinja text."""
    if name_or_jinja in TEMPLATES:
        return TEMPLATES[name_or_jinja]
    if "{%" in name_or_jinja or "{{" in name_or_jinja:
        return name_or_jinja
    raise ChatTemplateError(
        f"unknown chat template {name_or_jinja!r}; pass one of {', '.join(TEMPLATES)} or Jinja text."
    )


def template_hash(template: str | None) -> str | None:
    """A short, stable fingerprint of a chat template, recorded in every artefact's provenance."""
    if template is None:
        return None
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]
