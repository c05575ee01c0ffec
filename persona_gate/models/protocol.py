"""What persona_gate needs of a model, as a Protocol: TransformerLens's surface plus a tokenizer.

A ``TransformerBridge`` from :func:`persona_gate.load_chat_model` has all of it; so does anything
that quacks like one. Everything that goes beyond this surface -- the wrapped Hugging Face
model, its final norm and unembedding, generation, cache arguments -- is reached only through
:mod:`persona_gate.models.adapter`, which says with an
:class:`~persona_gate.errors.UnsupportedModelError` when a model lacks it.

Example::

    def my_analysis(model: ChatModel) -> None:
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", hook)]):
            model(tokens)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ChatModel(Protocol):
    """The surface persona_gate uses: config, tokenizer, blocks, hooks, forward, parameters."""

    cfg: Any  # n_layers, d_model, n_ctx, device, dtype
    tokenizer: Any  # a Hugging Face tokenizer with a chat template
    blocks: Any  # the transformer blocks in order, indexable (block re-runs, layer counts)

    def hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self) -> Iterator[Any]: ...
