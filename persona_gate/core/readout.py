"""The weighted read-out forward: one batch in, a few weighted sums of the residual stream out.

Every reader of activations (caching and direction fitting, the monitor's per-turn readings)
needs the same thing from a forward: at each requested site, ``rows`` weighted sums over the
sequence of every prompt in the batch,

    out[b, r, s] = sum_t W[b, r, t] * x_s[b, t]        (float32; W is 0 on pads)

computed inside the hook, so nothing of size ``seq`` is kept, and the forward aborted after the
last requested site has fired: later blocks, the final norm and the unembedding (three quarters
of a forward on a 262k-vocabulary model) never run.

Example::

    out = read_batch(model, pb.input_ids, pb.attention_mask, W, sites)   # [batch, rows, site, d]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import UnknownHookSiteError
from ..models.protocol import ChatModel
from ..sites import HookSite, resolve
from .prompt_layout import note_early_stop, prompt_layout

# Within one block the sites fire in this order; used to know which hook fires last.
KIND_ORDER = {"resid_pre": 0, "attn_out": 1, "resid_mid": 2, "mlp_out": 3, "resid_post": 4}


class _StopForward(Exception):
    """Raised by the last needed hook to skip the rest of the forward."""


def last_site_index(sites: Sequence[HookSite]) -> int:
    """Index of the site that fires last in a forward."""
    return max(range(len(sites)), key=lambda i: (sites[i].layer, KIND_ORDER[sites[i].kind]))


def read_batch(
    model: ChatModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    weights: Float[Tensor, "batch row seq"],
    sites: Sequence[HookSite],
) -> Float[Tensor, "batch row site d_model"]:
    """Weighted sums of the residual stream at every site for one left-padded batch (CPU, float32)."""
    device = weights.device
    names = [resolve(s, model) for s in sites]
    last = last_site_index(sites)
    b, rows = weights.shape[0], weights.shape[1]
    out = torch.empty((b, rows, len(sites), int(model.cfg.d_model)), dtype=torch.float32)
    fired: set[int] = set()

    def make_hook(k: int):
        def hook(x: Tensor, hook: Any) -> None:
            # float32 reduction: bf16 sums over long spans lose digits.
            out[:, :, k] = torch.einsum("brl,bld->brd", weights, x.float()).cpu()
            fired.add(k)
            if k == last:
                raise _StopForward

        return hook

    fwd_hooks = [(name, make_hook(k)) for k, name in enumerate(names)]
    with torch.no_grad(), prompt_layout(attention_mask), model.hooks(fwd_hooks=fwd_hooks):
        try:
            model(input_ids.to(device), attention_mask=attention_mask.to(device), return_type=None)
        except _StopForward:
            note_early_stop(sites[last].layer)  # hooks of later layers rightly never fire
    missing = [names[k] for k in range(len(names)) if k not in fired]
    if missing:
        raise UnknownHookSiteError(
            f"hooks {missing} never fired during the forward; the model does not run these sites "
            "(load it with persona_gate.load_chat_model, or pick other sites)."
        )
    return out
