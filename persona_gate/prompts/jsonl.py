"""Reading JSONL: the non-blank lines of a UTF-8 file, parsed one at a time, with their line numbers.

The file formats built on it (a conversation, fine-tuning data) differ in what a line holds and in
how their errors say what to do, so each caller says how to word the three things that can go
wrong (no file, not UTF-8, a line that is not JSON); the reading itself is written once here.
Lines are parsed lazily, so a caller's check of line 2 runs before line 3 is read.

Example::

    for n, obj in read_jsonl(
        path,
        missing=lambda: ValueError(f"{path} does not exist"),
        not_utf8=lambda e: ValueError(f"{path} is not UTF-8 ({e.reason})"),
        bad_line=lambda n, e: ValueError(f"{path}:{n} is not JSON ({e.msg})"),
    ):
        print(n, obj)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def read_jsonl(
    path: Path,
    *,
    missing: Callable[[], Exception],
    not_utf8: Callable[[UnicodeDecodeError], Exception],
    bad_line: Callable[[int, json.JSONDecodeError], Exception],
) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-blank line of ``path`` (numbered from 1); raises
    ``missing()`` for no such file, ``not_utf8(e)`` for bytes that are not UTF-8 and
    ``bad_line(n, e)`` for a line that is not valid JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise missing() from None
    except UnicodeDecodeError as e:
        raise not_utf8(e) from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise bad_line(n, e) from None
        yield n, value
