"""A model without its weights: the shapes, parameter counts and tokenizer a cost plan needs.

:func:`load_weightless` reads a Hugging Face ``config.json`` (a model folder, or the file
itself) and builds the architecture on PyTorch's ``meta`` device: every parameter has its shape
and dtype but no storage, nothing is read from disk beyond the config and the tokenizer files,
and nothing is fetched from the network. The result, a :class:`WeightlessModel`, carries what
:func:`~persona_gate.experiments.plan.plan_run` reads of a model -- ``cfg`` (layers, width,
heads, vocabulary, context, dtype), the blocks and their parameter counts, whether the forward
unembeds only the last position, the model's profile and its tokenizer -- and refuses to compute
(any forward or hook is a :class:`~persona_gate.errors.UnsupportedModelError`).

Tokens. A ``tokenizer.json`` beside the config is loaded and used as the run would use it, so a
plan's counts are exact. Without one (the paper's 8B configurations under ``paper/`` ship only
their public ``config.json``), an *estimating* tokenizer stands in (:func:`estimating_tokenizer`)
and the model says so (``tokens_estimated``). Its rule: one token per word (letters, with the one
space before it), per run of up to three digits, per run of other symbols (with the space before
it), per run of whitespace, and one per chat-template marker (``<|start_header_id|>``, ``<bos>``
...). A large-vocabulary tokenizer spends about one token per common English word: on
persona_gate's prompt grids the rule counted 98-100% of the padded tokens Gemma 3's own tokenizer
(262k vocabulary) makes of them (``tests/experiments/test_plan.py`` holds it within 5%). The chat
template is the config's ``chat_template`` if given, else persona_gate's registered template of
the model family (:data:`FAMILY_TEMPLATES`: turn markers only, without a default system text).

Example::

    model = load_weightless("paper/llama-3.1-8b-instruct", dtype="bfloat16")
    model.cfg.n_layers, model.tokens_estimated          # (32, True)
    sum(p.numel() for p in model.parameters())          # 8030261248
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ChatTemplateError, ConfigError, ModelNotFoundError, UnsupportedModelError
from ..prompts.templates import resolve_template
from .adapter import decoder_layers
from .profile import DEFAULT_PROFILE, profile_in_folder, set_profile
from .registry import ORGANISM

# The registered chat template (persona_gate.prompts.templates) of each model family, by the
# config's model_type: used for token counts when no tokenizer comes with the config.
FAMILY_TEMPLATES: dict[str, str] = {
    "llama": "llama3",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3_text": "gemma",
}
# The estimating tokenizer's rule (module docstring), as one regular expression.
ESTIMATE_PATTERN = r" ?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+"
TOKENIZER_FILES = ("tokenizer.json",)


@dataclass(frozen=True)
class WeightlessConfig:
    """The shapes a plan reads (``model.cfg``), named as on a TransformerLens model."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_vocab: int
    n_ctx: int | None
    dtype: torch.dtype
    model_name: str
    original_architecture: str
    device: str = "meta"


class WeightlessModel:
    """A model's architecture on the meta device with its tokenizer (module docstring); it computes nothing."""

    def __init__(self, hf_model: Any, tokenizer: Any, cfg: WeightlessConfig, *, tokens_estimated: bool) -> None:
        self.original_model = hf_model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.blocks = _decoder_layers(hf_model, cfg.n_layers)
        self.unembed = hf_model.get_output_embeddings()
        self.ln_final = None
        self.tokens_estimated = tokens_estimated

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.original_model.parameters()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedModelError(
            f"{self.cfg.model_name} was built without its weights (for a cost plan); it cannot run a forward. "
            "Load it with persona_gate.load_chat_model to compute anything."
        )

    hooks = __call__ = run_with_hooks = run_with_cache = _refuse


def _decoder_layers(hf_model: Any, n_layers: int) -> Any:
    """The model's blocks: its decoder layers."""
    layers = decoder_layers(hf_model, n_layers)
    if layers is None:
        raise UnsupportedModelError(
            f"no list of {n_layers} decoder layers in {type(hf_model).__name__}; this architecture cannot be "
            "planned without its weights: plan it with the weights loaded (persona-gate run --plan without plan_config)."
        )
    return layers


def config_folder(where: str | Path) -> Path:
    """The folder of a model's ``config.json``: ``where`` itself, its folder (a config file), or the organism's."""
    if str(where) == ORGANISM:
        from .loading import organism_dir

        return organism_dir()
    path = Path(where).expanduser()
    folder = path.parent if path.is_file() else path
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"no config.json at {path}; point plan_config to a model folder or its config.json (the paper's "
            "8B configurations ship one under paper/, e.g. paper/llama-3.1-8b-instruct)."
        )
    if path.is_file() and path.name != "config.json":
        raise ModelNotFoundError(f"{path} is not a config.json; point plan_config to a model's config.json or folder.")
    return folder


def estimating_tokenizer(chat_template: str) -> Any:
    """A fast tokenizer that counts tokens by the stated rule (module docstring) under ``chat_template``.

    Every word maps to one unknown-token id, so its ids say nothing of the text: only their number,
    the positions of the chat's parts and the template markers are meaningful.
    """
    import re

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<bos>", "<eos>"]
    specials += sorted(set(re.findall(r"<\|[^|<>\s]+\|>|<[a-z_]+>", chat_template)) - set(specials))
    tok = Tokenizer(models.WordLevel({s: i for i, s in enumerate(specials)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(ESTIMATE_PATTERN), behavior="isolated")
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        chat_template=chat_template,
        padding_side="left",
    )


def _tokenizer(folder: Path, model_type: str, chat_template: str | None) -> tuple[Any, bool]:
    """The folder's own tokenizer (exact counts), else the estimating one; and whether it estimates."""
    if any((folder / f).is_file() for f in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        if chat_template is not None:
            tokenizer.chat_template = resolve_template(chat_template)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, False
    name = chat_template if chat_template is not None else FAMILY_TEMPLATES.get(model_type)
    if name is None:
        raise ChatTemplateError(
            f"{folder} holds no tokenizer.json and persona_gate knows no chat template for model_type "
            f"{model_type!r}; set chat_template in the config (chatml, gemma, llama3 or Jinja text), or put the "
            "model's tokenizer.json beside its config.json."
        )
    return estimating_tokenizer(resolve_template(name)), True


def _shapes(hf_config: Any, n_layers: int, dtype: torch.dtype, name: str, arch: str) -> WeightlessConfig:
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    d_model, heads = int(text.hidden_size), int(text.num_attention_heads)
    d_head = getattr(text, "head_dim", None) or d_model // heads
    n_ctx = getattr(text, "max_position_embeddings", None)
    return WeightlessConfig(
        n_layers, d_model, heads, int(d_head), int(text.vocab_size), n_ctx and int(n_ctx), dtype, name, arch
    )


def load_weightless(
    where: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    chat_template: str | None = None,
    name: str | None = None,
) -> WeightlessModel:
    """The architecture of ``where`` (a folder with ``config.json``, the file, or ``"organism"``) without weights.

    ``dtype``: the dtype the run loads the weights in (what memory is counted in); ``chat_template``:
    as for :func:`~persona_gate.models.loading.load_chat_model`; ``name``: what the plan calls the
    model (default: the folder). Reads no weights and uses no network (module docstring).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from .loading import parse_dtype

    folder = config_folder(where)
    torch_dtype = parse_dtype(dtype)
    try:
        hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{folder / 'config.json'} is not a Hugging Face model config ({e}); fix it.") from None
    arch = (getattr(hf_config, "architectures", None) or [type(hf_config).__name__])[0]
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=torch_dtype)
    hf_model.eval()
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    n_layers = int(text.num_hidden_layers)
    tokenizer, estimated = _tokenizer(folder, str(hf_config.model_type), chat_template)
    cfg = _shapes(hf_config, n_layers, torch_dtype, str(name or folder), str(arch))
    model = WeightlessModel(hf_model, tokenizer, cfg, tokens_estimated=estimated)
    set_profile(model, profile_in_folder(folder) or DEFAULT_PROFILE)
    return model
