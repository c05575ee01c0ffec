"""Token-position selectors: which token(s) of a prompt an activation is read at.

Every selector reduces a prompt's residual stream ``x[t, d]`` to one vector as a weighted sum
``sum_t w[t] x[t]`` with weights that sum to 1, so a single mechanism serves the last token,
one post-instruction token and the mean over any span, and pads get weight 0 by construction.

Spellings (also accepted by the CLI):

* ``last``: the last prompt token (where the first response token is predicted);
* ``post_instruction[-k]``: the k-th template token from the end after the user's text
  (``post_instruction[-1]`` == ``last`` under a generation prompt);
* ``mean:system`` / ``mean:user`` / ``mean:post_instruction`` / ``mean:prompt``: the mean over
  that span. The persona direction that ablation can use lives in ``mean:system``;
* ``mean:response``: the mean over a generated reply appended to the prompt
  (:meth:`RenderedPrompt.with_response`), as persona-vector methods read traits.

Example::

    sel = parse_position("mean:system")
    weights(sel, rendered_prompt)   # {token_index: weight}
    str(sel)                        # 'mean:system'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import PositionError
from .chat import RenderedPrompt

SPANS: tuple[str, ...] = ("system", "user", "post_instruction", "prompt", "response")
# Every spelling parse_position accepts, in words: for its errors and the CLI's help texts.
SPELLINGS = f"last, post_instruction[-k] (k >= 1) or mean:SPAN with SPAN one of {', '.join(SPANS)}"


@dataclass(frozen=True)
class Position:
    """``kind`` is ``last``, ``post_instruction`` (with ``offset`` < 0) or ``mean`` (with ``span``)."""

    kind: str
    span: str | None = None
    offset: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "mean" and self.span not in SPANS:
            raise PositionError(f"unknown span {self.span!r}; use one of {', '.join(SPANS)}.")
        if self.kind == "post_instruction" and (self.offset is None or self.offset >= 0):
            raise PositionError(
                f"post_instruction offsets count from the end and must be negative, got {self.offset}; "
                "write post_instruction[-1] for the last template token."
            )
        if self.kind not in ("last", "post_instruction", "mean"):
            raise PositionError(f"unknown position kind {self.kind!r}; use last, post_instruction[-k] or mean:SPAN.")

    def __str__(self) -> str:
        if self.kind == "mean":
            return f"mean:{self.span}"
        if self.kind == "post_instruction":
            return f"post_instruction[{self.offset}]"
        return "last"


LAST = Position("last")
SYSTEM_MEAN = Position("mean", span="system")
USER_MEAN = Position("mean", span="user")

_POST = re.compile(r"^post_instruction\[(-\d+)\]$")


def parse_position(spec: str | Position) -> Position:
    if isinstance(spec, Position):
        return spec
    if not isinstance(spec, str):
        raise PositionError(f"a position selector is a string such as 'last' or 'mean:system', not {spec!r}.")
    s = spec.strip()
    if s == "last":
        return LAST
    if s.startswith("mean:"):
        return Position("mean", span=s[len("mean:") :])
    m = _POST.match(s)
    if m:
        return Position("post_instruction", offset=int(m.group(1)))
    raise PositionError(f"cannot parse position {spec!r}; write {SPELLINGS}.")


def weights(position: Position, rp: RenderedPrompt) -> dict[int, float]:
    """Token index -> weight for one rendered prompt (weights sum to 1)."""
    n = len(rp)
    if position.kind == "last":
        return {n - 1: 1.0} if rp.response is None else {rp.response[0] - 1: 1.0}
    if position.kind == "post_instruction":
        start, end = rp.post_instruction
        idx = end + position.offset  # type: ignore[operator]
        if idx < start:
            raise PositionError(
                f"{position} asks for more post-instruction tokens than this template has "
                f"({end - start}); use an offset between -1 and -{end - start}."
            )
        return {idx: 1.0}
    span = rp.span(position.span)  # type: ignore[arg-type]
    if span is None or span[1] <= span[0]:
        fix = {
            "system": "give it a system prompt",
            "response": "append a generated reply with RenderedPrompt.with_response",
        }.get(position.span or "", "check the prompt")
        raise PositionError(
            f"{position} selects no token: this prompt has no {position.span} span (persona "
            f"{rp.prompt.persona_id or 'none'}); {fix}, or choose another position."
        )
    w = 1.0 / (span[1] - span[0])
    return {i: w for i in range(*span)}
