"""Multi-turn conversations: loading, validation, and where every assistant turn sits in tokens.

A :class:`Conversation` is an ordered list of ``{"role", "content"}`` messages (roles
``system``, ``user``, ``assistant``). Every assistant message is a *turn*; a conversation that
ends with a user message has one more, *pending* turn whose reply has not been written yet.

:func:`render_conversation` renders a conversation with the model's chat template and finds,
for every turn, two token positions by character offsets (as :mod:`persona_gate.prompts.chat` does
for single prompts):

* ``start``: the last token of the turn's prompt, i.e. of ``messages[:i]`` rendered with the
  generation prompt -- where the turn's first reply token is predicted;
* ``response``: the tokens of the assistant's reply text (empty for a pending turn), as the
  template wrote it: stripped of surrounding whitespace by templates that ``trim`` content.

Under causal attention the activations of a token depend only on the tokens before it, so one
forward over the whole rendered conversation gives every turn's activations exactly as a
separate forward over that turn's prefix would -- *provided the full render starts with the
prefix render, token for token*. That holds for ChatML, Llama 3 and Gemma templates; a template
that rewrites earlier turns (e.g. strips reasoning from old replies) breaks it for those turns,
which then get a render (and a forward) of their own: :func:`render_conversation` returns as
few renders as the template allows, and one for ChatML-like templates.

:func:`converse` lets a model write the replies: it answers each user message greedily, turn by
turn (:func:`converse_many` plays many scripts at once, one batch per turn).

Example::

    conv = Conversation.load_jsonl("chat.jsonl")       # one {"role", "content"} object per line
    conv = converse(model, ["Hi!", "Tell me a joke."], system="You are a pirate.")
    render_conversation(model.tokenizer, conv)[0].turns[0]   # TurnPosition(turn=1, start=..., response=(a, b))
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ChatTemplateError, ConversationError
from .chat import (
    FOLD_SEPARATOR,
    RenderedPrompt,
    char_to_token_span,
    place,
    render_text,
    require_fast,
    require_template,
    supports_system_role,
)
from .jsonl import read_jsonl
from .sets import ChatPrompt

ROLES: tuple[str, ...] = ("system", "user", "assistant")
_FORMAT = 'one JSON object per line, {"role": "system" | "user" | "assistant", "content": "..."}'


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Turn:
    """Turn ``index`` (from 1): the assistant message at ``message_index`` (the index it would
    have when ``pending``), the user message it answers and the reply (None when pending)."""

    index: int
    message_index: int
    user: str | None
    response: str | None

    @property
    def pending(self) -> bool:
        return self.response is None


def _message(raw: Any, where: str) -> Message:
    if isinstance(raw, Message):
        return raw
    if not isinstance(raw, Mapping):
        raise ConversationError(f"{where} is a {type(raw).__name__}, not a message; write {_FORMAT}.")
    missing = [k for k in ("role", "content") if k not in raw]
    if missing:
        raise ConversationError(f"{where} lacks {missing}; write {_FORMAT}.")
    role, content = raw["role"], raw["content"]
    if role not in ROLES:
        raise ConversationError(f"{where} has role {role!r}; use one of {', '.join(ROLES)}.")
    if not isinstance(content, str):
        raise ConversationError(
            f"{where} has {type(content).__name__} content; the content must be a string (join "
            "multi-part content into one text)."
        )
    return Message(role, content)


@dataclass(frozen=True)
class Conversation:
    """An ordered chat, validated at construction; ``name`` labels it in results."""

    messages: tuple[Message, ...]
    name: str = ""

    def __post_init__(self) -> None:
        msgs = tuple(_message(m, f"message {i}") for i, m in enumerate(self.messages))
        object.__setattr__(self, "messages", msgs)
        if not msgs:
            raise ConversationError(f"the conversation is empty; give at least one user message ({_FORMAT}).")
        if not any(m.role == "user" for m in msgs):
            raise ConversationError("the conversation has no user message; a turn answers a user, so add one.")
        if not self.turns:
            raise ConversationError(
                "the conversation has no turn to monitor: no assistant message and it does not end with a "
                "user message; end it with the user message whose reply you want monitored."
            )

    @classmethod
    def from_messages(cls, messages: Sequence[Mapping[str, str] | Message], name: str = "") -> Conversation:
        """From ``[{"role": ..., "content": ...}, ...]`` (extra keys such as timestamps are ignored)."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise ConversationError(
                f"pass a list of messages, not a {type(messages).__name__}: "
                '[{"role": "user", "content": "..."}, ...].'
            )
        return cls(tuple(_message(m, f"message {i}") for i, m in enumerate(messages)), name)

    @classmethod
    def load_jsonl(cls, path: str | os.PathLike, name: str | None = None) -> Conversation:
        """Read a conversation written as one ``{"role", "content"}`` object per line (blank lines skipped)."""
        path = Path(path)
        bad_line = lambda n, e: f"{path}:{n} is not valid JSON ({e.msg}); write {_FORMAT}."
        lines = read_jsonl(path, error=ConversationError, expect=_FORMAT, bad_line=bad_line)
        messages = [_message(raw, f"{path}:{n}") for n, raw in lines]
        if not messages:
            raise ConversationError(f"{path} holds no messages; write {_FORMAT}.")
        return cls(tuple(messages), path.stem if name is None else name)

    def save_jsonl(self, path: str | os.PathLike) -> Path:
        from ..io import atomic_write_text

        lines = [json.dumps(m.as_dict(), ensure_ascii=False) for m in self.messages]
        return atomic_write_text(path, "\n".join(lines) + "\n")

    def to_messages(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]

    @property
    def turns(self) -> tuple[Turn, ...]:
        out, user = [], None
        for i, m in enumerate(self.messages):
            if m.role == "user":
                user = m.content
            elif m.role == "assistant":
                out.append(Turn(len(out) + 1, i, user, m.content))
        if self.messages[-1].role == "user":
            out.append(Turn(len(out) + 1, len(self.messages), user, None))
        return tuple(out)

    def __len__(self) -> int:
        return len(self.messages)


@dataclass(frozen=True)
class TurnPosition:
    """Where turn ``turn`` sits in one render: the response-start token and the reply's span."""

    turn: int
    start: int
    response: tuple[int, int] | None


@dataclass(frozen=True)
class RenderedConversation:
    """One render of ``messages[:n_messages]``: text, token ids and the turns it can be read at."""

    text: str
    input_ids: tuple[int, ...]
    n_messages: int
    turns: tuple[TurnPosition, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


def _fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Fold a leading system message into the first user turn, for templates without a system role."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}{FOLD_SEPARATOR}{m['content']}"
            return rest
    return rest


class _Tokenized:
    def __init__(self, tokenizer: Any, text: str):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        self.text, self.ids, self.offsets = text, tuple(enc["input_ids"]), enc["offset_mapping"]


def _position(
    tokenizer: Any,
    rendered: list[dict[str, str]],
    full: _Tokenized,
    prefix_text: str,
    prefix_ids: tuple[int, ...],
    turn: Turn,
    reply_at: int,
    generation_prompt: bool,
) -> TurnPosition | None:
    """Turn ``turn``'s positions in ``full``, or None if ``full`` does not extend its prefix exactly.

    The reply (message ``reply_at`` of ``rendered``) is placed by construction
    (:func:`persona_gate.prompts.chat.place`); a reply the template rewrites in this render (e.g.
    strips reasoning from an earlier turn) is not read here.
    """
    if not full.text.startswith(prefix_text):
        return None
    if not prefix_ids or full.ids[: len(prefix_ids)] != prefix_ids:
        return None
    response = None
    if turn.response:  # a pending turn or an empty reply has no reply tokens
        try:
            _, placed = place(tokenizer, rendered, [reply_at], generation_prompt, text=full.text)
        except ChatTemplateError:
            return None
        at = placed[reply_at]
        if at is None or at.start < len(prefix_text):
            return None
        if at.end > at.start:  # a whitespace-only reply the template trimmed away has no tokens
            response = char_to_token_span(full.offsets, at.start, at.end)
            if response[0] < len(prefix_ids):
                return None
    return TurnPosition(turn.index, len(prefix_ids) - 1, response)


def render_conversation(tokenizer: Any, conversation: Conversation) -> list[RenderedConversation]:
    """As few renders as the template allows (one for prefix-stable templates) covering every turn."""
    require_template(tokenizer)
    require_fast(tokenizer)
    messages = conversation.to_messages()
    fold = messages[0]["role"] == "system" and not supports_system_role(tokenizer)
    prep = _fold_system if fold else (lambda m: m)
    turns = list(conversation.turns)
    # Each turn's prompt, rendered and tokenized once (not again for every render that may extend it).
    prefixes = {}
    for t in turns:
        text = render_text(tokenizer, prep(messages[: t.message_index]), True)
        prefixes[t.index] = (text, _Tokenized(tokenizer, text).ids)
    segments: list[RenderedConversation] = []
    while turns:
        # Render up to the latest unread turn; read every earlier turn this render extends exactly.
        last = turns[-1]
        n = min(last.message_index + 1, len(messages))
        rendered = prep(messages[:n])
        full = _Tokenized(tokenizer, render_text(tokenizer, rendered, last.pending))
        read = {}
        for t in turns:
            reply_at = t.message_index - (1 if fold else 0)  # folding removes the system message
            pos = _position(tokenizer, rendered, full, *prefixes[t.index], t, reply_at, last.pending)
            if pos is not None:
                read[t.index] = pos
        if last.index not in read:
            raise ChatTemplateError(
                f"turn {last.index}'s reply does not appear verbatim (or stripped) after its prompt in the rendered "
                "conversation (the chat template rewrites it, or the tokenizer merges it into the prompt's last "
                "token); load the model with a chat_template that keeps replies as written."
            )
        segments.append(RenderedConversation(full.text, full.ids, n, tuple(read[i] for i in sorted(read))))
        turns = [t for t in turns if t.index not in read]
    return sorted(segments, key=lambda s: s.n_messages)


def prefix_prompt(tokenizer: Any, conversation: Conversation, group: str = "") -> RenderedPrompt:
    """The conversation rendered with the generation prompt, as a prompt to generate the next reply."""
    if conversation.messages[-1].role != "user":
        raise ConversationError("the conversation must end with a user message to generate the next reply.")
    messages = conversation.to_messages()
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    if system is not None and not system.strip():
        raise ConversationError(
            f"the conversation's system prompt is empty ({system!r}); give it a text or leave the system message out."
        )
    fold = system is not None and not supports_system_role(tokenizer)
    rendered = _fold_system(messages) if fold else messages
    last = len(rendered) - 1
    text, placed = place(tokenizer, rendered, [last] if fold or system is None else [0, last])
    tok = _Tokenized(tokenizer, text)
    user_at = placed[last]
    if user_at is None:
        raise ChatTemplateError(
            "the chat template drops the last user message; load the model with one that writes it."
        )
    user = messages[-1]["content"]
    sys_span = None
    if fold:
        first_user = next(i for i, m in enumerate(rendered) if m["role"] == "user")
        n = len(system)  # type: ignore[arg-type]
        if first_user == last:
            user_chars = user_at.part(n + len(FOLD_SEPARATOR), n + len(FOLD_SEPARATOR) + len(user))
            sys_span = char_to_token_span(tok.offsets, *user_at.part(0, n))
        else:
            user_chars = (user_at.start, user_at.end)
            _, first = place(tokenizer, rendered, [first_user], text=text)
            if first[first_user] is not None:
                sys_span = char_to_token_span(tok.offsets, *first[first_user].part(0, n))
    else:
        user_chars = (user_at.start, user_at.end)
        if system is not None and placed[0] is not None:
            sys_span = char_to_token_span(tok.offsets, placed[0].start, placed[0].end)
    user_span = char_to_token_span(tok.offsets, *user_chars)
    return RenderedPrompt(
        prompt=ChatPrompt(system=system, user=user, group=group),
        text=text,
        input_ids=tok.ids,
        system=sys_span,
        user=user_span,
        post_instruction=(user_span[1], len(tok.ids)),
        folded_system=fold,
    )
