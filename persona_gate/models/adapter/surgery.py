"""Weight surgery: edits of a Hugging Face model's weights (LoRA merges, exported interventions).

Exporting an intervention as plain weights (:mod:`persona_gate.export`) needs to know which
modules write into the residual stream and how their weights are laid out; that knowledge lives
here. :func:`plain_copy` unwraps a bridge into a plain Hugging Face model holding a CPU copy of
its weights, :func:`residual_writers` names the stream's writers as the bridge declares them
(``embed``, ``pos_embed``, each block's ``attn.o`` and ``mlp.out``), and
:func:`project_out_of_writes` / :func:`add_to_residual` edit them in float64.
:func:`merge_lora` folds a low-rank adapter into a model's weights at load time.

Example::

    writers = residual_writers(model)
    hf = plain_copy(model)                       # the loaded model is left as it is
    project_out_of_writes(hf, [w for pair in writers.blocks for w in pair], v)
    add_to_residual(hf, writers, 2, shift)       # a constant added to resid_pre.2
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...errors import UnsupportedModelError
from ..protocol import ChatModel
from .support import architecture, blocks_of, wrapped_model


def merge_lora(hf_model: Any, tensors: dict[str, Tensor], scale: float) -> int:
    """Fold a low-rank adapter into a Hugging Face model's weights: ``W += scale * B @ A``.

    ``tensors`` holds ``<module>.lora_A`` (r x in) and ``<module>.lora_B`` (out x r) for linear
    modules named as in ``hf_model.named_modules()`` (what
    :func:`persona_gate.finetune.lora.lora_tensors` writes). Merged in float64, so the result does
    not depend on the order of the additions. Returns the number of merged modules; a name the
    model lacks or a shape that does not fit is an :class:`UnsupportedModelError`.
    """
    modules = dict(hf_model.named_modules())
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    with torch.no_grad():
        for name in names:
            m = modules.get(name)
            a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
            if m is None or a is None or b is None or not hasattr(m, "weight"):
                raise UnsupportedModelError(
                    f"the adapter names {name!r}, which this model lacks (or half of it is missing); "
                    "load the base model the adapter was trained on."
                )
            if tuple(m.weight.shape) != (b.shape[0], a.shape[1]):
                raise UnsupportedModelError(
                    f"the adapter's {name} is {b.shape[0]}x{a.shape[1]} but the model's is "
                    f"{tuple(m.weight.shape)}; load the base model the adapter was trained on."
                )
            delta = scale * (b.double() @ a.double())
            m.weight.copy_((m.weight.double() + delta).to(m.weight.dtype))
    return len(names)


def hf_model_of(model: Any) -> Any:
    """The Hugging Face model a TransformerBridge wraps; a named error for any other model."""
    hf = wrapped_model(model)
    if hf is None:
        raise UnsupportedModelError(
            f"a {type(model).__name__} wraps no Hugging Face model; load one with pg.load_chat_model(...)."
        )
    return hf


def _original(component: Any) -> Any | None:
    return getattr(component, "original_component", None) or getattr(component, "_original_component", None)


def _writes_out(module: Any) -> str:
    """How ``module``'s weight maps to the residual stream: ``"rows"`` when it is (out, in) as in
    ``nn.Linear``, ``"cols"`` when it is (in, out) as in GPT-2's ``Conv1D`` or an embedding."""
    if isinstance(module, torch.nn.Linear):
        return "rows"
    if isinstance(module, torch.nn.Embedding) or type(module).__name__ == "Conv1D":
        return "cols"
    raise UnsupportedModelError(
        f"cannot edit a {type(module).__name__} that writes into the residual stream; "
        "export works on linear, Conv1D and embedding writers."
    )


@dataclass(frozen=True)
class ResidualWriters:
    """Names (in the wrapped Hugging Face model) of every module that writes into the residual stream."""

    embeddings: tuple[str, ...]  # token (and learned position) embeddings: they make resid_pre.0
    blocks: tuple[tuple[str, str], ...]  # per block: (attention output, MLP output)
    tied: bool  # the token embedding is also the unembedding


_WRAPPER = "._original_component"  # how the bridge nests the Hugging Face modules it wraps


def _plain_name(hf: Any, module: Any, plain: set[str]) -> str | None:
    """``module``'s name in an unwrapped copy of ``hf`` (the bridge reaches it by several paths)."""
    for name, m in hf.named_modules(remove_duplicate=False):
        if m is module and name.replace(_WRAPPER, "") in plain:
            return name.replace(_WRAPPER, "")
    return None


def _plain_skeleton(hf: Any) -> Any:
    """An unwrapped model of ``hf``'s class and config on the meta device (no memory, no weights)."""
    import copy

    config = copy.deepcopy(hf.config)
    with torch.device("meta"):
        return type(hf)._from_config(
            config, attn_implementation=getattr(config, "_attn_implementation", None) or "eager"
        )


def plain_copy(model: ChatModel) -> Any:
    """A plain Hugging Face model (no bridge components) holding a CPU copy of ``model``'s weights,
    ready to edit and ``save_pretrained``; the loaded model is left as it is."""
    hf = hf_model_of(model)
    fresh = _plain_skeleton(hf)
    config = fresh.config
    want = fresh.state_dict()
    have = {k.replace(_WRAPPER, ""): v for k, v in hf.state_dict().items()}
    missing = [k for k in want if k not in have]
    if missing:
        raise UnsupportedModelError(
            f"cannot unwrap {architecture(model)}'s weights ({missing[:3]} not found); "
            "export needs a model the bridge wraps without renaming parameters."
        )
    fresh.load_state_dict({k: have[k].detach().to("cpu", copy=True) for k in want}, assign=True)
    for name, buf in hf.named_buffers():  # rotary tables and the like, rebuilt from the config otherwise
        plain_name = name.replace(_WRAPPER, "")
        try:
            target = fresh.get_buffer(plain_name)
        except AttributeError:
            continue
        if target.is_meta:
            parent, _, leaf = plain_name.rpartition(".")
            fresh.get_submodule(parent).register_buffer(leaf, buf.detach().to("cpu", copy=True), persistent=False)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    left = [n for n, t in [*fresh.named_parameters(), *fresh.named_buffers()] if t.is_meta]
    if left:
        raise UnsupportedModelError(
            f"cannot unwrap {architecture(model)}: {left[:3]} have no values; export needs a "
            "model whose tensors the bridge keeps."
        )
    return fresh.eval()


def residual_writers(model: ChatModel) -> ResidualWriters:
    """The residual stream's writers, as the bridge declares them (``embed``, ``pos_embed``, each
    block's ``attn.o`` and ``mlp.out``), named as in :func:`plain_copy`'s model. Architectures
    whose blocks normalise their outputs before adding them to the stream (Gemma 2/3, OLMo-2
    post-norms) have no writer whose weights can carry a residual-stream edit exactly:
    :class:`UnsupportedModelError`."""
    hf, blocks = wrapped_model(model), blocks_of(model)
    if hf is None or blocks is None:
        raise UnsupportedModelError(
            "exporting weights needs a TransformerBridge over a Hugging Face model; "
            "load it with pg.load_chat_model(...)."
        )
    plain = {n for n, _ in _plain_skeleton(hf).named_modules()}

    def name_of(component: Any, what: str) -> str:
        module = _original(component) if component is not None else None
        name = _plain_name(hf, module, plain) if module is not None else None
        if name is None:
            raise UnsupportedModelError(
                f"the bridge declares no {what} for {architecture(model)}; this architecture "
                "cannot be exported as weights (use hooks: pg.apply)."
            )
        _writes_out(module)
        return name

    out = []
    for i, block in enumerate(blocks):
        post = [n for n in ("ln1_post", "ln2_post") if getattr(block, n, None) is not None]
        if post:
            raise UnsupportedModelError(
                f"{architecture(model)} normalises each block's outputs ({', '.join(post)}) before adding them to the "
                "residual stream, so no weight edit reproduces a residual-stream intervention exactly; apply it with "
                "hooks (pg.apply) instead."
            )
        out.append(
            (
                name_of(getattr(block.attn, "o", None), f"attention output of block {i}"),
                name_of(getattr(block.mlp, "out", None), f"MLP output of block {i}"),
            )
        )
    embeddings = [name_of(model.embed, "token embedding")]
    if getattr(model, "pos_embed", None) is not None:
        embeddings.append(name_of(model.pos_embed, "position embedding"))
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    scale = getattr(_original(model.embed), "embed_scale", None)
    if getattr(hf.config, "scale_embedding", False) or (scale is not None and float(torch.as_tensor(scale)) != 1.0):
        raise UnsupportedModelError(
            f"{architecture(model)} scales its token embeddings; export supports unscaled ones."
        )
    return ResidualWriters(tuple(embeddings), tuple(out), tied)


def mlp_bias_problem(hf_model: Any, writers: ResidualWriters, layer: int) -> str | None:
    """Why a constant cannot be added to the stream entering block ``layer`` through the weights of
    ``hf_model`` (a :func:`plain_copy`, whose module names :func:`residual_writers` gives); None: it can."""
    if layer == 0:
        return None
    m = hf_model.get_submodule(writers.blocks[layer - 1][1])
    if getattr(m, "bias", None) is not None or hasattr(hf_model.config, "mlp_bias"):
        return None
    return (
        f"{type(hf_model).__name__}'s MLP output has no bias and its config cannot declare one, so steering after "
        "layer 0 has no exact weight equivalent here; steer at layer 0, export a control vector, or use hooks (pg.apply)."
    )


def untie_embeddings(hf_model: Any) -> None:
    """Give the unembedding its own copy of the weights, so an edit of the embedding stays there."""
    head = hf_model.get_output_embeddings()
    if head is None or head.weight is not hf_model.get_input_embeddings().weight:
        hf_model.config.tie_word_embeddings = False
        return
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    hf_model.config.tie_word_embeddings = False
    if hasattr(hf_model.config, "get_text_config"):
        hf_model.config.get_text_config().tie_word_embeddings = False


def project_out_of_writes(hf_model: Any, names: Iterable[str], v: Tensor) -> None:
    """Make every named writer's output orthogonal to the unit vector ``v``: ``W <- (I - v v^T) W``
    on the output side (and the bias), in float64."""
    v = v.double()
    with torch.no_grad():
        for name in names:
            m = hf_model.get_submodule(name)
            w = m.weight.double()
            w = w - torch.outer(v, v @ w) if _writes_out(m) == "rows" else w - torch.outer(w @ v, v)
            m.weight.copy_(w.to(m.weight.dtype))
            if getattr(m, "bias", None) is not None:
                b = m.bias.double()
                m.bias.copy_((b - v * (v @ b)).to(m.bias.dtype))


def _enable_mlp_bias(hf_model: Any, writers: ResidualWriters) -> None:
    """Give every MLP projection a zero bias where the config can declare one (Llama's
    ``mlp_bias``, which covers gate, up and down), so the saved folder loads with transformers alone."""
    cfg = hf_model.config
    if not hasattr(cfg, "mlp_bias"):
        raise UnsupportedModelError(mlp_bias_problem(hf_model, writers, 1) or "the MLP cannot carry a bias.")
    cfg.mlp_bias = True
    for _, mlp_out in writers.blocks:
        mlp = hf_model.get_submodule(mlp_out.rsplit(".", 1)[0])
        for child in mlp.children():
            if isinstance(child, torch.nn.Linear) and child.bias is None:
                child.bias = torch.nn.Parameter(
                    torch.zeros(child.out_features, dtype=child.weight.dtype, device=child.weight.device)
                )


def add_to_residual(hf_model: Any, writers: ResidualWriters, layer: int, shift: Tensor) -> str:
    """Add the constant ``shift`` to the residual stream entering block ``layer`` at every
    position: at layer 0 to every token embedding; after it to the bias of block ``layer - 1``'s
    MLP output (the last writer before it). Returns the edited module's name."""
    with torch.no_grad():
        if layer == 0:
            name = writers.embeddings[0]
            m = hf_model.get_submodule(name)
            m.weight.add_(shift.to(m.weight.dtype)[None, :])
            return name
        name = writers.blocks[layer - 1][1]
        m = hf_model.get_submodule(name)
        if getattr(m, "bias", None) is None:
            _enable_mlp_bias(hf_model, writers)
            m = hf_model.get_submodule(name)
        m.bias.add_(shift.to(m.bias.dtype))
        return name
