"""Fine-tuning data as chat examples: one ``{"messages": [...]}`` object per JSONL line.

That is the format of Hugging Face chat datasets and of fine-tuning APIs: a list of
``{"role": "system" | "user" | "assistant", "content": "..."}`` messages ending with the
assistant reply the fine-tune teaches. Every earlier message is the reply's prompt (a system
message, if any, first; then user and assistant turns ending with a user message). Anything
else is a :class:`~persona_gate.errors.DatasetError` naming the file, the line and the fix.

Example::

    examples = read_chat_jsonl("train.jsonl")
    examples[0].prompt.to_messages(), examples[0].reply
    write_chat_jsonl(examples, "copy.jsonl")
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConversationError, DatasetError
from ..prompts.conversation import Conversation
from ..prompts.jsonl import read_jsonl

FORMAT = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'


@dataclass(frozen=True)
class ChatExample:
    """One fine-tuning example: the prompt conversation and the assistant ``reply`` it teaches."""

    prompt: Conversation
    reply: str
    id: str
    line: int | None = None

    @property
    def user(self) -> str:
        return next(m.content for m in reversed(self.prompt.messages) if m.role == "user")

    @property
    def system(self) -> str | None:
        first = self.prompt.messages[0]
        return first.content if first.role == "system" else None

    @property
    def assistant(self) -> str:
        return self.reply

    def messages(self, with_answer: bool = True) -> list[dict[str, str]]:
        """The example as role/content dicts; ``with_answer=False``: the prompt only (what fine-tuning renders)."""
        return [*self.prompt.to_messages(), *([{"role": "assistant", "content": self.reply}] if with_answer else [])]

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.messages()}


def example(messages: Any, id: str = "", line: int | None = None) -> ChatExample:
    """A :class:`ChatExample` from a message list (a sequence of role/content mappings); ``DatasetError``
    (naming ``line``) for anything else, or when it cannot train a reply. ``messages`` is typed ``Any``:
    it is the user's file as parsed, checked here."""
    where = f"line {line}: " if line is not None else (f"example {id!r}: " if id else "")
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise DatasetError(f"{where}'messages' must be a non-empty list of messages; write {FORMAT}.")
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "assistant":
        raise DatasetError(f"{where}the last message must be the assistant reply the example teaches; write {FORMAT}.")
    reply = last.get("content")
    if not isinstance(reply, str) or not reply.strip():
        raise DatasetError(
            f"{where}the assistant reply is empty or not a string; give it the text the fine-tune teaches."
        )
    try:
        prompt = Conversation.from_messages(messages[:-1], name=id)
    except ConversationError as e:
        raise DatasetError(f"{where}{e}") from None
    if prompt.messages[-1].role != "user":
        raise DatasetError(f"{where}the reply must answer a user message: put a user message right before it.")
    return ChatExample(prompt=prompt, reply=reply, id=id or (f"line-{line}" if line is not None else ""), line=line)


def read_chat_jsonl(path: str | os.PathLike) -> list[ChatExample]:
    """Every example of a JSONL file (blank lines skipped); the first malformed line raises, naming it."""
    path = Path(path)
    bad_line = lambda n, e: f"{path}, line {n}: not valid JSON ({e.msg}); write one {FORMAT} object per line."
    lines = read_jsonl(path, error=DatasetError, expect=f"one {FORMAT} object per line", bad_line=bad_line)
    out = []
    for n, obj in lines:
        if not isinstance(obj, dict) or "messages" not in obj:
            raise DatasetError(f"{path}, line {n}: expected an object with a 'messages' list; write {FORMAT}.")
        try:
            out.append(example(obj["messages"], id=str(obj.get("id", f"line-{n}")), line=n))
        except DatasetError as e:
            raise DatasetError(f"{path}, {e}") from None
    if not out:
        raise DatasetError(f"{path} holds no examples; write one {FORMAT} object per line.")
    _check_unique(out, str(path))
    return out


def as_examples(data: str | os.PathLike | Iterable[Any]) -> list[ChatExample]:
    """Examples from a JSONL path, ChatExamples, ``{"messages": [...]}`` dicts or message lists."""
    if isinstance(data, (str, os.PathLike)):
        return read_chat_jsonl(data)
    out = []
    for i, item in enumerate(data):
        if isinstance(item, ChatExample):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(example(item.get("messages", ()), id=str(item.get("id", f"example-{i}"))))
        else:
            out.append(example(item, id=f"example-{i}"))
    if not out:
        raise DatasetError(f"no examples were given; pass a JSONL path or a list of {FORMAT} objects.")
    _check_unique(out, "the examples")
    return out


def _check_unique(examples: Sequence[ChatExample], where: str) -> None:
    ids = [e.id for e in examples]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DatasetError(f"{where}: example ids {dup[:5]} repeat; give every example its own 'id' (or drop the ids).")


def write_chat_jsonl(examples: Iterable[ChatExample | Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write examples as JSONL (atomically), one ``{"messages": [...]}`` object per line."""
    from ..io import atomic_write_text

    rows = [e.to_dict() if isinstance(e, ChatExample) else dict(e) for e in examples]
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
