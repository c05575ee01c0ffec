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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .chat import RenderedPrompt, char_to_token_span, require_template, supports_system_role
from ..errors import ChatTemplateError, ConversationError
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
    def from_messages(cls, messages: Sequence[Mapping[str, str] | Message], name: str = "") -> "Conversation":
        """From ``[{"role": ..., "content": ...}, ...]`` (extra keys such as timestamps are ignored)."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise ConversationError(
                f"pass a list of messages, not a {type(messages).__name__}: "
                '[{"role": "user", "content": "..."}, ...].'
            )
        return cls(tuple(_message(m, f"message {i}") for i, m in enumerate(messages)), name)

    @classmethod
    def load_jsonl(cls, path: str | os.PathLike, name: str | None = None) -> "Conversation":
        """Read a conversation written as one ``{"role", "content"}`` object per line (blank lines skipped)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConversationError(f"{path} does not exist; pass a JSONL file with {_FORMAT}.") from None
        except UnicodeDecodeError as e:
            raise ConversationError(f"{path} is not UTF-8 text ({e.reason}); save it as UTF-8 JSONL.") from None
        messages = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConversationError(f"{path}:{n} is not valid JSON ({e.msg}); write {_FORMAT}.") from None
            messages.append(_message(raw, f"{path}:{n}"))
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
            m["content"] = f"{system}\n\n{m['content']}"
            return rest
    return rest


def _apply(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # Jinja's raise_exception surfaces as various exception types
        raise ChatTemplateError(
            f"the model's chat template rejects this conversation ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "fix the conversation to the template's rules (e.g. put a mid-conversation persona change in a user "
            "message, not a second system message) or load the model with another chat_template."
        ) from None


class _Tokenized:
    def __init__(self, tokenizer: Any, text: str):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        self.text, self.ids, self.offsets = text, tuple(enc["input_ids"]), enc["offset_mapping"]


def _reply_span(full: _Tokenized, after: int, content: str) -> tuple[int, int] | None:
    """Characters of the reply ``content`` right after its prompt (which ends at ``after``), or None.

    The reply as written, or stripped: Llama 3 and Gemma templates ``trim`` message content. The
    template may put whitespace between prompt and reply; the same text further on is another
    turn's reply, not this one's.
    """
    for text in dict.fromkeys((content, content.strip())):
        at = full.text.find(text, after) if text else -1
        if at >= 0 and not full.text[after:at].strip():
            return at, at + len(text)
    return None


def _position(full: _Tokenized, prefix_text: str, prefix_ids: tuple[int, ...], turn: Turn) -> TurnPosition | None:
    """Turn ``turn``'s positions in ``full``, or None if ``full`` does not extend its prefix exactly."""
    if not full.text.startswith(prefix_text):
        return None
    if not prefix_ids or full.ids[: len(prefix_ids)] != prefix_ids:
        return None
    response = None
    content = turn.response
    if content:  # a pending turn or an empty reply has no reply tokens
        chars = _reply_span(full, len(prefix_text), content)
        if chars is None:
            if content.strip():
                return None
            # A whitespace-only reply that the template trimmed away: no reply tokens, as for an empty one.
        else:
            response = char_to_token_span(full.offsets, *chars)
            if response[0] < len(prefix_ids):
                return None
    return TurnPosition(turn.index, len(prefix_ids) - 1, response)


def render_conversation(tokenizer: Any, conversation: Conversation) -> list[RenderedConversation]:
    """As few renders as the template allows (one for prefix-stable templates) covering every turn."""
    require_template(tokenizer)
    if not getattr(tokenizer, "is_fast", False):
        raise ChatTemplateError(
            "persona_gate needs a fast (Rust) tokenizer to map turns to tokens; load the model with a "
            "tokenizer.json (AutoTokenizer(use_fast=True))."
        )
    messages = conversation.to_messages()
    fold = messages[0]["role"] == "system" and not supports_system_role(tokenizer)
    prep = _fold_system if fold else (lambda m: m)
    turns = list(conversation.turns)
    # Each turn's prompt, rendered and tokenized once (not again for every render that may extend it).
    prefixes = {}
    for t in turns:
        text = _apply(tokenizer, prep(messages[: t.message_index]), True)
        prefixes[t.index] = (text, _Tokenized(tokenizer, text).ids)
    segments: list[RenderedConversation] = []
    while turns:
        # Render up to the latest unread turn; read every earlier turn this render extends exactly.
        last = turns[-1]
        n = min(last.message_index + 1, len(messages))
        text = _apply(tokenizer, prep(messages[:n]), generation_prompt=last.pending)
        full = _Tokenized(tokenizer, text)
        read = {}
        for t in turns:
            pos = _position(full, *prefixes[t.index], t)
            if pos is not None:
                read[t.index] = pos
        if last.index not in read:
            raise ChatTemplateError(
                f"turn {last.index}'s reply does not appear verbatim (or stripped) after its prompt in the rendered "
                "conversation (the chat template rewrites it, or the tokenizer merges it into the prompt's last "
                "token); load the model with a chat_template that keeps replies as written."
            )
        segments.append(RenderedConversation(text, full.ids, n, tuple(read[i] for i in sorted(read))))
        turns = [t for t in turns if t.index not in read]
    return sorted(segments, key=lambda s: s.n_messages)


def prefix_prompt(tokenizer: Any, conversation: Conversation, group: str = "") -> RenderedPrompt:
    """The conversation rendered with the generation prompt, as a prompt to generate the next reply."""
    if conversation.messages[-1].role != "user":
        raise ConversationError("the conversation must end with a user message to generate the next reply.")
    messages = conversation.to_messages()
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    fold = system is not None and not supports_system_role(tokenizer)
    text = _apply(tokenizer, _fold_system(messages) if fold else messages, True)
    tok = _Tokenized(tokenizer, text)
    user = messages[-1]["content"]
    at = text.rfind(user)
    if not user or at < 0:
        raise ChatTemplateError(
            "the rendered conversation does not contain the last user message verbatim; pass a chat template "
            "that keeps messages as written (chat_template=...)."
        )
    user_span = char_to_token_span(tok.offsets, at, at + len(user))
    sys_span = None
    if system:
        s = text.find(system)
        sys_span = char_to_token_span(tok.offsets, s, s + len(system)) if s >= 0 else None
    return RenderedPrompt(
        prompt=ChatPrompt(system=system, user=user, group=group),
        text=text,
        input_ids=tok.ids,
        system=sys_span,
        user=user_span,
        post_instruction=(user_span[1], len(tok.ids)),
        folded_system=fold,
    )
