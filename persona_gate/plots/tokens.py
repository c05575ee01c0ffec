"""Prompt tokens coloured by their projection onto the persona and refusal directions (circuitsvis).

``values[i]`` (or ``values[i, k]`` for several directions) is token ``i``'s residual stream
projected onto a unit direction, ``x_i . d``: positive = toward the direction's positive group
(e.g. compliant persona, refusal). One direction uses ``circuitsvis.tokens.colored_tokens`` with a
colour range symmetric about 0, so a token with no projection is white; several use
``colored_tokens_multi``, which has a button per direction and lists every value on hover.

Example::

    view = token_view(["<bos>", "You", " are"], torch.tensor([[0.1, -0.3], [1.2, 0.4], [0.9, 0.0]]))
    view                         # renders in Jupyter (view._repr_html_())
    Path("t.html").write_text(str(view))     # HTML that loads circuitsvis from the CDN
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from circuitsvis.tokens import colored_tokens, colored_tokens_multi
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Float
from torch import Tensor

from ._common import PlotError

DEFAULT_LABELS = ("persona", "refusal")


def token_view(
    tokens: Sequence[str],
    values: Float[Tensor, " n_tokens"] | Float[Tensor, "n_tokens n_directions"],
    *,
    labels: Sequence[str] | None = None,
    max_abs: float | None = None,
) -> RenderedHTML:
    """A circuitsvis view of ``tokens`` coloured by ``values`` (1-D: one direction; 2-D: one column each).

    ``labels`` name the columns (default ``("persona", "refusal")`` for two). ``max_abs`` fixes the
    1-D colour range to ``[-max_abs, max_abs]`` (default: the largest |value|), so views of
    different prompts can share a scale.
    """
    tokens = [str(t) for t in tokens]
    if values.shape[0] != len(tokens):
        raise PlotError(f"{len(tokens)} tokens but values has {values.shape[0]} rows; give one value per token.")
    v = values.detach().cpu().float()
    if not torch.isfinite(v).all():
        raise PlotError("values hold NaN or inf; project real activations (or replace missing tokens with 0).")
    if v.ndim == 1:
        bound = float(v.abs().max()) if max_abs is None else float(max_abs)
        bound = bound if bound > 0 else 1.0  # all-zero values: any non-empty range shows them white
        return colored_tokens(tokens, v.tolist(), min_value=-bound, max_value=bound)
    if labels is None:
        labels = DEFAULT_LABELS if v.shape[1] == 2 else [f"direction {k}" for k in range(v.shape[1])]
    labels = [str(x) for x in labels]
    if len(labels) != v.shape[1]:
        raise PlotError(f"{len(labels)} labels for {v.shape[1]} value columns; give one label per direction.")
    return colored_tokens_multi(tokens, v, labels)
