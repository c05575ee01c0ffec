"""The adapter: the only code in persona_gate that touches TransformerLens or Hugging Face internals.

Everything beyond the :class:`~persona_gate.models.protocol.ChatModel` surface goes through here:

* **block re-runs** -- :func:`record_blocks` records every block's input and call arguments during
  one clean forward (rotary embeddings, masks, ALiBi: whatever the architecture passes), and
  :func:`run_blocks` re-runs blocks ``k..L-1`` from a recorded input (activation patching re-runs
  only what a patch at layer ``k`` changes);
* **the head** -- :func:`head_logits` applies the final norm and unembedding that the bridge
  itself declares for the architecture (its ``ln_final`` and ``unembed`` components, so every
  architecture TransformerLens supports works without a list of our own) and the output
  transform it declares (the logit soft-capping of Gemma 2);
* **forwards for the last position only** -- :func:`last_logits` passes ``logits_to_keep=1`` when
  the wrapped model takes it (on a 262k vocabulary the unembedding of every position would cost
  more than the rest of the forward);
* **generation** -- :func:`greedy_generate` decodes through the wrapped model's ``generate``
  (its layers are the bridge's blocks, so every hook fires) with a fresh greedy config and the KV
  cache on or off; models without one fall back to an uncached argmax loop;
* **identity** -- :func:`architecture`, :func:`eos_ids`, :func:`weights_folder`.

:func:`check_supported` tells *before any work* whether a model has what a computation needs
and raises :class:`~persona_gate.errors.UnsupportedModelError` naming the fix otherwise.

Example::

    check_supported(model, "replay")
    rec = record_blocks(model, ids)              # clean run: inputs of every block
    x = run_blocks(model, rec, 3, rec.inputs[3])
    logits = head_logits(model, x[:, -1])
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from ..errors import UnsupportedModelError

# Keyword names under which Hugging Face blocks receive the KV cache (they changed across
# transformers releases); a re-run from recorded inputs must pass none of them.
CACHE_ARGUMENTS: tuple[str, ...] = ("past_key_values", "past_key_value", "layer_past", "cache", "use_cache")

# What each computation needs of a model; see check_supported.
NEEDS: dict[str, str] = {
    "hooks": "TransformerLens hook points (cfg, tokenizer, hooks)",
    "blocks": "a list of transformer blocks (model.blocks)",
    "replay": "blocks that can be re-run from recorded inputs, and a final norm and unembedding",
}


def _wrapped(model: Any) -> Any | None:
    """The Hugging Face model a TransformerBridge wraps (None for other models)."""
    return getattr(model, "original_model", None)


def _hf_config(model: Any) -> Any | None:
    hf = _wrapped(model)
    return getattr(hf, "config", None)


def missing_needs(model: Any, needs: Iterable[str]) -> list[str]:
    """The entries of ``needs`` that ``model`` lacks (empty: supported)."""
    out = []
    for need in needs:
        if need not in NEEDS:
            raise ValueError(f"unknown need {need!r}; use one of {', '.join(NEEDS)}")
        if need == "hooks":
            ok = all(hasattr(model, a) for a in ("cfg", "tokenizer", "hooks"))
        elif need == "blocks":
            ok = _blocks(model) is not None
        else:  # replay
            ok = _blocks(model) is not None and _head(model) is not None and _wrapped(model) is not None
        if not ok:
            out.append(need)
    return out


def check_supported(model: Any, *needs: str, what: str = "this computation") -> None:
    """Raise :class:`UnsupportedModelError` unless ``model`` has every one of ``needs``."""
    missing = missing_needs(model, needs or ("hooks",))
    if missing:
        lacks = "; ".join(NEEDS[m] for m in missing)
        raise UnsupportedModelError(
            f"{what} needs {lacks}, which this {type(model).__name__} ({architecture(model)}) lacks; load the "
            "model with persona_gate.load_chat_model (a TransformerBridge declares its blocks, final norm and "
            "unembedding for every architecture TransformerLens supports), or skip this stage."
        )


def _blocks(model: Any) -> Any:
    blocks = getattr(model, "blocks", None)
    try:
        return blocks if blocks is not None and len(blocks) == int(model.cfg.n_layers) else None
    except (TypeError, AttributeError):
        return None


def _head(model: Any) -> tuple[Any, Any] | None:
    """The bridge's own final norm and unembedding components (what it declares per architecture)."""
    norm, unembed = getattr(model, "ln_final", None), getattr(model, "unembed", None)
    if unembed is None or not callable(unembed):
        return None
    return norm, unembed


def architecture(model: Any) -> str:
    """The model's architecture name (e.g. ``LlamaForCausalLM``), as the bridge or HF records it."""
    cfg = getattr(model, "cfg", None)
    arch = getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None)
    if arch:
        return str(arch)
    hf = _wrapped(model)
    return type(hf if hf is not None else model).__name__


def weights_folder(model: Any) -> Path | None:
    """The local folder the model's weights were loaded from, if any (for its model profile)."""
    cfg = _hf_config(model)
    where = getattr(cfg, "_name_or_path", None) or getattr(cfg, "name_or_path", None)
    if not where:
        return None
    path = Path(str(where)).expanduser()
    return path if path.is_dir() else None


def eos_ids(model: Any) -> list[int]:
    """Every end-of-sequence id: the tokenizer's and the checkpoint's generation config's."""
    ids: set[int] = set()
    tok_eos = getattr(model.tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(int(tok_eos))
    gen_cfg = getattr(_wrapped(model), "generation_config", None)
    cfg_eos = getattr(gen_cfg, "eos_token_id", None)
    if cfg_eos is not None:
        ids.update(int(i) for i in (cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos]))
    return sorted(ids)


def input_device(model: Any) -> torch.device:
    """Where inputs must go: the device of the first parameter (the embeddings under device_map)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device(getattr(model.cfg, "device", None) or "cpu")


# ------------------------------------------------------------------------------------ forwards


def _takes_logits_to_keep(model: Any) -> bool:
    hf = _wrapped(model)
    if hf is None:
        return False
    try:
        return "logits_to_keep" in inspect.signature(hf.forward).parameters
    except (TypeError, ValueError):
        return False


def last_logits(model: Any, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Logits at the last position ``[batch, vocab]``, unembedding nothing else where the model allows."""
    kwargs: dict[str, Any] = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if _wrapped(model) is not None:
        kwargs["use_cache"] = False
    if _takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = 1
    return model(input_ids, **kwargs)[:, -1]


def unembedded_rows(model: Any, rows: int, seq: int) -> int:
    """Positions :func:`last_logits` unembeds for a ``rows x seq`` batch (for cost plans)."""
    return rows if _takes_logits_to_keep(model) else rows * seq


def head_logits(model: Any, x: Tensor) -> Tensor:
    """Final norm, unembedding and output transform (soft-capping) of residual-stream vectors ``x`` (``[..., d_model]``)."""
    head = _head(model)
    if head is None:
        check_supported(model, "replay", what="unembedding a residual stream")
    norm, unembed = head  # type: ignore[misc]
    logits = unembed(norm(x) if norm is not None else x)
    # The output transform the bridge declares for the architecture: Gemma 2's final soft-cap (which
    # the HF model applies in its forward, not in its unembedding), Granite's and Cohere's scaling.
    declared = getattr(getattr(model, "adapter", None), "apply_output_logits_transform", None)
    return declared(logits) if callable(declared) else logits


# ------------------------------------------------------------------------------ block re-runs


def _block_signature(block: Any) -> inspect.Signature | None:
    """The wrapped HF block's own ``forward`` signature, without ``self`` (from its class: the bridge
    replaces the instance's ``forward`` with a ``(*args, **kwargs)`` wrapper). GPT-2 passes its mask
    positionally after the cache, so arguments are named by binding, not by position."""
    target = getattr(block, "original_component", block)
    try:
        sig = inspect.signature(type(target).forward)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())[1:]
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return None
    return sig.replace(parameters=params)


@dataclass
class BlockRecord:
    """Every block's input ``inputs[k]`` and its other call arguments, from one clean forward."""

    inputs: dict[int, Tensor] = field(default_factory=dict)
    arguments: dict[int, dict[str, Any]] = field(default_factory=dict)
    called: set[int] = field(default_factory=set)
    batch: int = 1  # rows of the recorded forward


def _recorder(record: BlockRecord, k: int, sig: inspect.Signature | None, keep_input: bool = True) -> Callable:
    def fn(module: Any, args: tuple, kwargs: dict) -> None:
        if sig is not None:
            bound = dict(sig.bind_partial(*args, **kwargs).arguments)
            for p in sig.parameters.values():  # a **kwargs parameter binds as one dict
                if p.kind is inspect.Parameter.VAR_KEYWORD and isinstance(bound.get(p.name), dict):
                    bound.update(bound.pop(p.name))
            name = next(iter(sig.parameters))
        else:  # an opaque block: positional hidden state, keyword rest
            bound = {"hidden_states": args[0] if args else kwargs["hidden_states"], **kwargs}
            name = "hidden_states"
        hidden = bound.pop(name)  # re-runs pass it first, positionally
        record.called.add(k)
        if keep_input:
            record.inputs[k] = hidden.detach().clone()
        record.arguments[k] = {key: v for key, v in bound.items() if key not in CACHE_ARGUMENTS}

    return fn


def record_blocks(
    model: Any,
    input_ids: Tensor,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
    *,
    attention_mask: Tensor | None = None,
    keep: Iterable[int] | None = None,
) -> tuple[BlockRecord, Tensor]:
    """A clean forward of ``input_ids`` recording every block's input; returns it and the last logits.

    ``fwd_hooks`` ride along (e.g. to keep activations of the same run, or interventions shared
    by every later re-run). ``attention_mask``: of a left-padded batch. ``keep``: the blocks whose
    inputs are kept (default all; every block's call arguments are kept regardless).
    """
    check_supported(model, "replay", what="re-running blocks")
    record = BlockRecord(batch=int(input_ids.shape[0]))
    blocks = model.blocks
    wanted = set(range(len(blocks)) if keep is None else keep)
    handles = [
        blocks[k].register_forward_pre_hook(_recorder(record, k, _block_signature(blocks[k]), k in wanted), with_kwargs=True)
        for k in range(len(blocks))
    ]
    try:
        with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
            logits = last_logits(model, input_ids, attention_mask)
    finally:
        for h in handles:
            h.remove()
    missing = [k for k in range(len(blocks)) if k not in record.called]
    if missing:
        check_supported(model, "replay", what=f"re-running blocks (blocks {missing} were never called)")
        raise UnsupportedModelError(
            f"blocks {missing} were never called in a forward of this {architecture(model)}; "
            "patching cannot re-run them. Load the model with persona_gate.load_chat_model."
        )
    return record, logits


def _tile(value: Any, copies: int, batch: int) -> Any:
    """A recorded argument of a ``batch``-row forward for ``copies`` cell-major copies of it.

    Hugging Face blocks receive batch-indexed tensors with the batch first (masks ``[b, 1, q, k]``,
    position ids, rotary tables ``[b, seq, d]``; ALiBi biases ``[b * heads, 1, k]``): those are
    repeated; batch-1 tensors (broadcast over the batch) are expanded; 1-d tensors (cache
    positions) and non-tensors are left as they are.
    """
    if isinstance(value, Tensor) and value.ndim >= 2:
        if value.shape[0] == 1:
            return value.expand(copies * batch, *value.shape[1:]) if copies * batch > 1 else value
        if copies > 1 and value.shape[0] % batch == 0:
            return value.repeat(copies, *([1] * (value.ndim - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_tile(v, copies, batch) for v in value)
    return value


def run_blocks(
    model: Any,
    record: BlockRecord,
    start: int,
    hidden: Tensor,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
    *,
    snapshots: dict[int, Tensor | None] | None = None,
) -> Tensor:
    """Blocks ``start..L-1`` on ``hidden``; the residual after the last.

    ``hidden`` holds whole copies of the recorded batch, cell-major (rows ``c*b .. (c+1)*b - 1``
    are copy ``c`` of the ``b`` recorded rows): each copy can carry a different intervention.
    ``snapshots``: its keys are blocks whose input (before any of that block's hooks) is stored under them.
    """
    x = hidden
    rows, batch = int(hidden.shape[0]), record.batch
    if rows % batch:
        raise ValueError(f"a re-run needs whole copies of the recorded {batch}-row batch, got {rows} rows.")
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for j in range(start, len(model.blocks)):
            if snapshots is not None and j in snapshots:
                snapshots[j] = x
            kwargs = {key: _tile(v, rows // batch, batch) for key, v in record.arguments[j].items()}
            out = model.blocks[j](x, **kwargs)
            x = out[0] if isinstance(out, tuple) else out
    return x


# -------------------------------------------------------------------------------- generation


def greedy_generate(
    model: Any, ids: Tensor, mask: Tensor, max_new_tokens: int, *, use_kv_cache: bool, pad_id: int, eos: list[int]
) -> Tensor:
    """Prompt plus greedy continuation ``[batch, prompt + new]`` (left-padded prompts)."""
    hf = _wrapped(model)
    if hf is not None and hasattr(hf, "generate"):
        from transformers import GenerationConfig

        # A fresh config: the checkpoint's own (sampling, repetition penalty ...) must not leak in.
        cfg = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, use_cache=use_kv_cache, pad_token_id=pad_id, eos_token_id=eos or None
        )
        return hf.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    return _argmax_loop(model, ids, mask, max_new_tokens, pad_id, eos)


def _argmax_loop(model: Any, ids: Tensor, mask: Tensor, max_new_tokens: int, pad_id: int, eos: list[int]) -> Tensor:
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = model(ids, attention_mask=mask)
        nxt = logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        done |= torch.isin(nxt, torch.tensor(eos, device=ids.device)) if eos else done
        if done.all():
            break
    return ids


def merge_lora(hf_model: Any, tensors: dict[str, Tensor], scale: float) -> int:
    """Fold a low-rank adapter into a Hugging Face model's weights: ``W += scale * B @ A``.

    ``tensors`` holds ``<module>.lora_A`` (r x in) and ``<module>.lora_B`` (out x r) for linear
    modules named as in ``hf_model.named_modules()`` (what
    :func:`persona_gate.organism.lora.lora_tensors` writes). Merged in float64, so the result does
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
                raise UnsupportedModelError(f"the adapter names {name!r}, which this model lacks (or half of it is missing); "
                                            "load the base model the adapter was trained on.")  # fmt: skip
            if tuple(m.weight.shape) != (b.shape[0], a.shape[1]):
                raise UnsupportedModelError(f"the adapter's {name} is {b.shape[0]}x{a.shape[1]} but the model's is "
                                            f"{tuple(m.weight.shape)}; load the base model the adapter was trained on.")  # fmt: skip
            delta = scale * (b.double() @ a.double())
            m.weight.copy_((m.weight.double() + delta).to(m.weight.dtype))
    return len(names)


def reply_logits(hf_model: Any, input_ids: Tensor, attention_mask: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
    """Logits at ``(rows[i], positions[i])`` only, for a loss on reply tokens: the decoder body runs
    once and the unembedding only where a prediction is scored (with a 262k vocabulary the
    unembedding of every position would be most of a training step). Applies the model's final
    logit soft-cap when its config declares one."""
    body = hf_model.get_decoder() if hasattr(hf_model, "get_decoder") else hf_model.model
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    logits = hf_model.get_output_embeddings()(hidden[rows, positions])
    cap = getattr(hf_model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def save_dequantised(hf_model: Any, tokenizer: Any, folder: Path) -> None:
    """``save_pretrained`` for a model read from a GGUF file, whose weights transformers has already
    de-quantised to floats but which still carries the GGUF quantizer (and so refuses to save):
    the quantizer and its config entry are set aside for the save and put back afterwards, so the
    folder loads as a plain float model."""
    quantizer = getattr(hf_model, "hf_quantizer", None)
    had_qc = hasattr(hf_model.config, "quantization_config")
    qc = getattr(hf_model.config, "quantization_config", None)
    try:
        hf_model.hf_quantizer = None
        if had_qc:
            del hf_model.config.quantization_config
        hf_model.save_pretrained(folder, safe_serialization=True)
    finally:
        hf_model.hf_quantizer = quantizer
        if had_qc:
            hf_model.config.quantization_config = qc
    tokenizer.save_pretrained(folder)


# ----------------------------------------------------------------------------- weight edits
# Exporting an intervention as plain weights (persona_gate.export) needs to know which modules
# write into the residual stream and how their weights are laid out; that knowledge lives here.


def hf_model_of(model: Any) -> Any:
    """The Hugging Face model a TransformerBridge wraps; a named error for any other model."""
    hf = _wrapped(model)
    if hf is None:
        raise UnsupportedModelError(f"a {type(model).__name__} wraps no Hugging Face model; load one with pg.load_chat_model(...).")
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
    raise UnsupportedModelError(f"cannot edit a {type(module).__name__} that writes into the residual stream; "
                                "export works on linear, Conv1D and embedding writers.")  # fmt: skip


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
        return type(hf)._from_config(config, attn_implementation=getattr(config, "_attn_implementation", None) or "eager")


def plain_copy(model: Any) -> Any:
    """A plain Hugging Face model (no bridge components) holding a CPU copy of ``model``'s weights,
    ready to edit and ``save_pretrained``; the loaded model is left as it is."""
    hf = hf_model_of(model)
    fresh = _plain_skeleton(hf)
    config = fresh.config
    want = fresh.state_dict()
    have = {k.replace(_WRAPPER, ""): v for k, v in hf.state_dict().items()}
    missing = [k for k in want if k not in have]
    if missing:
        raise UnsupportedModelError(f"cannot unwrap {architecture(model)}'s weights ({missing[:3]} not found); "
                                    "export needs a model the bridge wraps without renaming parameters.")  # fmt: skip
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
        raise UnsupportedModelError(f"cannot unwrap {architecture(model)}: {left[:3]} have no values; export needs a "
                                    "model whose tensors the bridge keeps.")  # fmt: skip
    return fresh.eval()


def residual_writers(model: Any) -> ResidualWriters:
    """The residual stream's writers, as the bridge declares them (``embed``, ``pos_embed``, each
    block's ``attn.o`` and ``mlp.out``), named as in :func:`plain_copy`'s model. Architectures
    whose blocks normalise their outputs before adding them to the stream (Gemma 2/3, OLMo-2
    post-norms) have no writer whose weights can carry a residual-stream edit exactly:
    :class:`UnsupportedModelError`."""
    hf, blocks = _wrapped(model), _blocks(model)
    if hf is None or blocks is None:
        raise UnsupportedModelError("exporting weights needs a TransformerBridge over a Hugging Face model; "
                                    "load it with pg.load_chat_model(...).")  # fmt: skip
    plain = {n for n, _ in _plain_skeleton(hf).named_modules()}

    def name_of(component: Any, what: str) -> str:
        module = _original(component) if component is not None else None
        name = _plain_name(hf, module, plain) if module is not None else None
        if name is None:
            raise UnsupportedModelError(f"the bridge declares no {what} for {architecture(model)}; this architecture "
                                        "cannot be exported as weights (use hooks: pg.apply).")  # fmt: skip
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
        out.append((name_of(getattr(block.attn, "o", None), f"attention output of block {i}"),
                    name_of(getattr(block.mlp, "out", None), f"MLP output of block {i}")))  # fmt: skip
    embeddings = [name_of(model.embed, "token embedding")]
    if getattr(model, "pos_embed", None) is not None:
        embeddings.append(name_of(model.pos_embed, "position embedding"))
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    scale = getattr(_original(model.embed), "embed_scale", None)
    if getattr(hf.config, "scale_embedding", False) or (scale is not None and float(torch.as_tensor(scale)) != 1.0):
        raise UnsupportedModelError(f"{architecture(model)} scales its token embeddings; export supports unscaled ones.")
    return ResidualWriters(tuple(embeddings), tuple(out), tied)


def mlp_bias_problem(hf_model: Any, writers: ResidualWriters, layer: int) -> str | None:
    """Why a constant cannot be added to the stream entering block ``layer`` through the weights of
    ``hf_model`` (a :func:`plain_copy`, whose module names :func:`residual_writers` gives); None: it can."""
    if layer == 0:
        return None
    m = hf_model.get_submodule(writers.blocks[layer - 1][1])
    if getattr(m, "bias", None) is not None or hasattr(hf_model.config, "mlp_bias"):
        return None
    return (f"{type(hf_model).__name__}'s MLP output has no bias and its config cannot declare one, so steering after "
            "layer 0 has no exact weight equivalent here; steer at layer 0, export a control vector, or use hooks (pg.apply).")


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
                child.bias = torch.nn.Parameter(torch.zeros(child.out_features, dtype=child.weight.dtype,
                                                            device=child.weight.device))  # fmt: skip


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
