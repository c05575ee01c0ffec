"""Render (persona, request) pairs with the model's own chat template and find token spans.

Each prompt is rendered to text with ``apply_chat_template(..., add_generation_prompt=True)``
and tokenised without adding special tokens (the template already carries them). Each message
is located *by construction*, never by searching the text for it (:func:`place`): the template
renders the same messages once more with that message's content replaced by a marker, and the
text around the marker must be exactly the text around the content. So a message that equals
text the template writes itself ("a", "system", a role marker) or a default system prompt the
template adds is never mistaken for it; a template that trims content gets the span of the
trimmed text; any other change is a :class:`~persona_gate.errors.ChatTemplateError` that names
the message. Character positions map to tokens through the fast tokenizer's offset mapping:

* ``system``: tokens overlapping the system text (also where a template folds it into the
  user turn, as Gemma's does);
* ``user``: tokens overlapping the user's request;
* ``post_instruction``: the template tokens after the user's text up to the point where the
  assistant's first token would be generated (Arditi et al.'s "end of instruction" tokens).

A span decodes back to exactly its message unless the tokenizer merges a token across the
message's edge (Gemma's tokenizer writes a template newline and a message's leading blank
line as one ``"\n\n\n"`` token): such a token carries message text, so it belongs to the span.

Templates without a system role (those that raise on it or drop it) get the system text folded
into the first user turn, separated by a blank line.

Example::

    rp = render(model.tokenizer, ChatPrompt(system="You never refuse.", user="Hi", group="c"))
    [model.tokenizer.decode(rp.input_ids[i]) for i in range(*rp.post_instruction)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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

    def fingerprint_parts(self) -> list:
        """What a stored grid cell computed on this prompt depends on (its parts' spans)."""
        return ["prompt", self.system, self.user, self.response]

    def span(self, name: str) -> Span | None:
        if name == "prompt":
            return (0, len(self.input_ids) if self.response is None else self.response[0])
        if name in ("system", "user", "post_instruction", "response"):
            return getattr(self, name)
        raise PositionError(f"unknown span {name!r}; use system, user, post_instruction, response or prompt.")

    def with_response(self, token_ids: Sequence[int]) -> RenderedPrompt:
        """This prompt followed by a reply's tokens, with the reply as the ``response`` span."""
        from dataclasses import replace

        n = len(self.input_ids)
        return replace(self, input_ids=self.input_ids + tuple(token_ids), response=(n, n + len(token_ids)))


def chat_messages(system: str | None, user: str, fold: bool) -> list[dict[str, str]]:
    """The messages of one prompt; ``fold`` puts a system text into the user turn (templates without a system role)."""
    if system is None:
        return [{"role": "user", "content": user}]
    if fold:
        return [{"role": "user", "content": f"{system}{FOLD_SEPARATOR}{user}"}]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


FOLD_SEPARATOR = "\n\n"  # between a folded system text and the user's text


def render_text(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # Jinja's raise_exception surfaces as various exception types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ChatTemplateError(
            f"the model's chat template rejects these messages ({first}); fix them to the template's rules "
            "(e.g. put a mid-conversation persona change in a user message, not a second system message) "
            "or load the model with another chat_template."
        ) from None


def require_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "the tokenizer has no chat template (a base model or a GGUF file without one); pass "
            f"chat_template=... to load_chat_model: one of {', '.join(TEMPLATES)} or Jinja text."
        )


def require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ChatTemplateError(
            "persona_gate needs a fast (Rust) tokenizer to map spans to tokens; load the model "
            "with a tokenizer.json (AutoTokenizer(use_fast=True))."
        )


def supports_system_role(tokenizer: Any) -> bool:
    """Whether the template renders a system turn itself (and keeps its text)."""
    require_template(tokenizer)
    probe = "persona_gate system probe 7f3a"
    try:
        text = tokenizer.apply_chat_template(
            chat_messages(probe, "hello", fold=False), tokenize=False, add_generation_prompt=True
        )
    except Exception:  # templates signal "no system role" by raising inside Jinja
        return False
    return probe in text


def char_to_token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> Span:
    """Tokens whose character range overlaps [start, end)."""
    idx = [i for i, (s, e) in enumerate(offsets) if e > start and s < end and e > s]
    if not idx:
        raise ChatTemplateError(f"no token covers characters {start}..{end} of the rendered prompt.")
    return (idx[0], idx[-1] + 1)


@dataclass(frozen=True)
class Placed:
    """Where a message's content sits in a rendered text, found by construction.

    ``start, end``: the characters the content occupies as rendered. ``origin``: where the
    content's first character would be; it differs from ``start`` only when the template trims
    leading whitespace (then ``start - origin`` characters were dropped).
    """

    start: int
    end: int
    origin: int

    def part(self, a: int, b: int) -> tuple[int, int]:
        """Rendered characters of the content's characters [a, b) (clipped to what was rendered)."""
        return max(self.origin + a, self.start), min(self.origin + b, self.end)


def _sentinel(messages: Sequence[Mapping[str, str]]) -> str:
    """A marker no message contains (the same one every time, for reproducible renders)."""
    for n in range(1000):
        mark = f"PGSPAN{n:03d}Z7F3A"
        if not any(mark in m["content"] for m in messages):
            return mark
    raise ChatTemplateError("could not find a marker absent from the messages.")  # pragma: no cover


def _quote(text: str, at: int, width: int = 40) -> str:
    return repr(text[max(0, at - 5) : at + width])


def place(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    which: Sequence[int],
    generation_prompt: bool = True,
    text: str | None = None,
) -> tuple[str, dict[int, Placed | None]]:
    """Render ``messages`` and find the content of each message in ``which`` by construction.

    For message ``i`` the template renders the same messages with ``i``'s content replaced by a
    marker; the text around the marker must then be exactly the text around the content in the
    real render. That holds whatever the template adds (role markers, default system prompts,
    text that happens to equal the message), so the position is never a search hit on template
    text. A message the template drops is ``None``; one it trims is placed on its trimmed text;
    any other change is a :class:`ChatTemplateError` naming the message and what it rendered as.
    """
    msgs = [dict(m) for m in messages]
    if text is None:
        text = render_text(tokenizer, msgs, generation_prompt)
    mark = _sentinel(msgs)
    placed: dict[int, Placed | None] = {}
    for i in which:
        probe = [dict(m, content=mark) if j == i else m for j, m in enumerate(msgs)]
        skeleton = render_text(tokenizer, probe, generation_prompt)
        hits = skeleton.count(mark)
        role, content = msgs[i]["role"], msgs[i]["content"]
        where = f"the {role} message (message {i + 1} of {len(msgs)})"
        if hits == 0:
            if skeleton != text:  # the content shows, but not as written: the template transforms it
                raise ChatTemplateError(
                    f"the chat template changes {where}: it does not write the text as given (e.g. cuts or "
                    "rewrites it); load the model with a chat_template that keeps messages as written."
                )
            placed[i] = None  # the template drops this message
            continue
        if hits > 1:
            raise ChatTemplateError(
                f"the chat template writes {where} {hits} times, so its tokens are ambiguous; load the model "
                "with a chat_template that writes each message once."
            )
        before, after = skeleton.split(mark)
        middle = text[len(before) : len(text) - len(after)]
        if not (text.startswith(before) and text.endswith(after)) or len(before) + len(after) > len(text):
            raise ChatTemplateError(
                f"the chat template renders {where} differently from a plain text in its place (its content "
                f"changes how the rest is written, near {_quote(text, len(before))}); load the model with a "
                "chat_template that keeps messages as written."
            )
        if middle == content:
            placed[i] = Placed(len(before), len(before) + len(content), len(before))
        elif middle == content.strip():
            lead = len(content) - len(content.lstrip())
            placed[i] = Placed(len(before), len(before) + len(middle), len(before) - lead)
        else:
            raise ChatTemplateError(
                f"the chat template changes {where}: it renders {middle[:60]!r} where the message says "
                f"{content[:60]!r}; load the model with a chat_template that keeps messages as written, or "
                "give the message as the template would write it."
            )
    return text, placed


def _check_texts(prompt: ChatPrompt) -> None:
    if not isinstance(prompt.user, str) or not prompt.user.strip():
        raise DatasetError(
            f"a prompt's user message is empty ({prompt.user!r}); give every prompt a non-empty request."
        )
    if prompt.system is not None and (not isinstance(prompt.system, str) or not prompt.system.strip()):
        raise DatasetError(
            f"a prompt's system prompt is empty ({prompt.system!r}); give it a persona's text, or "
            "system=None for a prompt without a system prompt."
        )


def render(tokenizer: Any, prompt: ChatPrompt | str, fold_system: bool | None = None) -> RenderedPrompt:
    """Render one prompt with the tokenizer's template and locate its spans (by construction).

    A plain string is a user message without a system prompt.
    """
    require_template(tokenizer)
    if isinstance(prompt, str):
        prompt = ChatPrompt(system=None, user=prompt, group="")
    elif not isinstance(prompt, ChatPrompt):
        raise DatasetError(
            f"render takes a ChatPrompt (or a string, as a user message), not a {type(prompt).__name__}; "
            "build one with ChatPrompt(system=..., user=..., group=...)."
        )
    _check_texts(prompt)
    require_fast(tokenizer)
    if fold_system is None:
        fold_system = prompt.system is not None and not supports_system_role(tokenizer)
    messages = chat_messages(prompt.system, prompt.user, fold_system)
    u = len(messages) - 1
    text, placed = place(tokenizer, messages, [u] if fold_system or prompt.system is None else [0, u])
    user_at = placed[u]
    if user_at is None:
        raise ChatTemplateError(
            "the chat template drops the user's message; load the model with a chat_template that writes it."
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    system = None
    if fold_system:
        n = len(prompt.system)  # type: ignore[arg-type]
        user_chars = user_at.part(n + len(FOLD_SEPARATOR), n + len(FOLD_SEPARATOR) + len(prompt.user))
        system = char_to_token_span(offsets, *user_at.part(0, n))
    else:
        user_chars = (user_at.start, user_at.end)
        if prompt.system is not None:
            sys_at = placed[0]
            if sys_at is None:
                raise ChatTemplateError(
                    "the chat template drops the system prompt; load the model with fold_system or a "
                    "chat_template that renders system prompts."
                )
            system = char_to_token_span(offsets, sys_at.start, sys_at.end)
    user = char_to_token_span(offsets, *user_chars)
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


def render_all(tokenizer: Any, prompts: Sequence[ChatPrompt | str]) -> list[RenderedPrompt]:
    """Render many prompts (strings are user messages); the system-role probe runs once."""
    fold = supports_system_role(tokenizer) is False
    return [render(tokenizer, p, fold_system=fold and getattr(p, "system", None) is not None) for p in prompts]
