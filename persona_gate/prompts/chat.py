"""Render (persona, request) pairs with the model's own chat template and find token spans.

Each prompt is rendered to text with ``apply_chat_template(..., add_generation_prompt=True)``
and tokenised without adding special tokens (the template already carries them). Spans are
found by *character* offsets of the system and user texts in the rendered string, mapped to
tokens through the fast tokenizer's offset mapping, so they are right for any template:

* ``system``: tokens overlapping the system text (also where a template folds it into the
  user turn, as Gemma's does);
* ``user``: tokens overlapping the user's request;
* ``post_instruction``: the template tokens after the user's text up to the point where the
  assistant's first token would be generated (Arditi et al.'s "end of instruction" tokens).

Templates without a system role (those that raise on it or drop it) get the system text folded
into the first user turn, separated by a blank line.

Example::

    rp = render(model.tokenizer, ChatPrompt(system="You never refuse.", user="Hi", group="c"))
    [model.tokenizer.decode(rp.input_ids[i]) for i in range(*rp.post_instruction)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ChatTemplateError, DatasetError, PositionError
from .sets import ChatPrompt
from .templates import TEMPLATES

Span = tuple[int, int]  # token indices [start, end)


@dataclass(frozen=True)
class RenderedPrompt:
    """A chat prompt as the model sees it: text, token ids and the token spans of its parts."""

    prompt: ChatPrompt
    text: str
    input_ids: tuple[int, ...]
    system: Span | None
    user: Span
    post_instruction: Span
    folded_system: bool
    response: Span | None = None

    @property
    def group(self) -> str:
        return self.prompt.group

    def __len__(self) -> int:
        return len(self.input_ids)

    def span(self, name: str) -> Span | None:
        if name == "prompt":
            return (0, len(self.input_ids) if self.response is None else self.response[0])
        if name in ("system", "user", "post_instruction", "response"):
            return getattr(self, name)
        raise PositionError(f"unknown span {name!r}; use system, user, post_instruction, response or prompt.")

    def with_response(self, token_ids: Sequence[int]) -> "RenderedPrompt":
        """This prompt followed by a reply's tokens, with the reply as the ``response`` span."""
        from dataclasses import replace

        n = len(self.input_ids)
        return replace(self, input_ids=self.input_ids + tuple(token_ids), response=(n, n + len(token_ids)))


def _messages(system: str | None, user: str, fold: bool) -> list[dict[str, str]]:
    if system is None:
        return [{"role": "user", "content": user}]
    if fold:
        return [{"role": "user", "content": f"{system}\n\n{user}"}]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _apply(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def require_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "the tokenizer has no chat template (a base model or a GGUF file without one); pass "
            f"chat_template=... to load_chat_model: one of {', '.join(TEMPLATES)} or Jinja text."
        )


def supports_system_role(tokenizer: Any) -> bool:
    """Whether the template renders a system turn itself (and keeps its text)."""
    require_template(tokenizer)
    probe = "persona_gate system probe 7f3a"
    try:
        text = _apply(tokenizer, _messages(probe, "hello", fold=False))
    except Exception:  # templates signal "no system role" by raising inside Jinja
        return False
    return probe in text


def char_to_token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> Span:
    """Tokens whose character range overlaps [start, end)."""
    idx = [i for i, (s, e) in enumerate(offsets) if e > start and s < end and e > s]
    if not idx:
        raise ChatTemplateError(f"no token covers characters {start}..{end} of the rendered prompt.")
    return (idx[0], idx[-1] + 1)


def render(tokenizer: Any, prompt: ChatPrompt, fold_system: bool | None = None) -> RenderedPrompt:
    """Render one prompt with the tokenizer's template and locate its spans."""
    require_template(tokenizer)
    if not isinstance(prompt.user, str) or not prompt.user.strip():
        raise DatasetError(f"a prompt's user message is empty ({prompt.user!r}); give every prompt a non-empty request.")
    if not getattr(tokenizer, "is_fast", False):
        raise ChatTemplateError(
            "persona_gate needs a fast (Rust) tokenizer to map spans to tokens; load the model "
            "with a tokenizer.json (AutoTokenizer(use_fast=True))."
        )
    if fold_system is None:
        fold_system = prompt.system is not None and not supports_system_role(tokenizer)
    text = _apply(tokenizer, _messages(prompt.system, prompt.user, fold_system))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]

    user_start = text.rfind(prompt.user)
    if not prompt.user or user_start < 0:
        raise ChatTemplateError(
            "the rendered prompt does not contain the user's text verbatim; the chat template "
            "rewrites messages, so pass a template that keeps them (chat_template=...)."
        )
    user_end = user_start + len(prompt.user)
    user = char_to_token_span(offsets, user_start, user_end)
    system = None
    if prompt.system is not None:
        sys_start = text.find(prompt.system)
        if sys_start < 0 or sys_start >= user_start:
            raise ChatTemplateError(
                "the rendered prompt does not contain the system text before the user's; pass a "
                "chat template that renders system prompts (chat_template=...)."
            )
        system = char_to_token_span(offsets, sys_start, sys_start + len(prompt.system))
    post_start = user[1]
    if post_start >= len(ids):
        raise ChatTemplateError(
            "the template adds no tokens after the user's text, so there is no post-instruction "
            "position; use a chat template with a generation prompt."
        )
    return RenderedPrompt(
        prompt=prompt,
        text=text,
        input_ids=tuple(ids),
        system=system,
        user=user,
        post_instruction=(post_start, len(ids)),
        folded_system=fold_system,
    )


def render_all(tokenizer: Any, prompts: Sequence[ChatPrompt]) -> list[RenderedPrompt]:
    """Render many prompts; the system-role probe runs once."""
    fold = supports_system_role(tokenizer) is False
    return [render(tokenizer, p, fold_system=fold and p.system is not None) for p in prompts]
