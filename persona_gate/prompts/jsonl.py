"""Reading JSONL: the non-blank lines of a UTF-8 file, parsed one at a time, with their line numbers.

The file formats built on it (a conversation, fine-tuning data) differ in what a line holds, in
their error class and in how they name a line; each caller says what the file should hold
(``expect``, e.g. ``"one JSON object per line"``), which error to raise and how to word a line that
is not JSON. The reading, and the words for a folder, a missing file and bytes that are not UTF-8,
are written once here. Lines are parsed lazily, so a caller's check of line 2 runs before line 3
is read.

Example::

    for n, obj in read_jsonl(path, error=ValueError, expect="one JSON object per line",
                             bad_line=lambda n, e: f"{path}:{n} is not JSON ({e.msg})"):
        print(n, obj)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def read_jsonl(
    path: str | os.PathLike,
    *,
    error: Callable[[str], Exception],
    expect: str,
    bad_line: Callable[[int, json.JSONDecodeError], str],
) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-blank line of ``path`` (numbered from 1). A folder,
    no such file or bytes that are not UTF-8 raise ``error(message)``, the message asking for a JSONL
    file with ``expect``; a line that is not valid JSON raises ``error(bad_line(n, e))``."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a folder; pass a JSONL file with {expect}.")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} does not exist; pass a JSONL file with {expect}.") from None
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text ({e.reason}); save it as UTF-8 JSONL with {expect}.") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(bad_line(n, e)) from None
        yield n, value
