"""Loading in seconds: checksums remembered, an adapter's merge kept, the tokenizer read once.

On tiny models (tests/archs.py) with stand-in adapters: every cached route gives the same bits as
the route it replaces (merging again, the bridge re-reading the tokenizer, transformers parsing
``tokenizer.json`` a second time). The real Gemma chat model's version is in
tests/finetune/test_gemma_chat.py (slow).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch
from safetensors.torch import save_file

import persona_gate.models.adapter as adapter
from persona_gate import load_chat_model
from persona_gate.models import cache, loading

IDS = torch.tensor([[1, 40, 50, 60, 70, 80, 90]])


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONA_GATE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _old(path, seconds=60):
    """Date a file back, as every file is a few seconds after it was written."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def _adapter(folder, base, seed, modules=("q_proj", "v_proj", "down_proj")):
    """A stand-in adapter on ``base`` (a tiny Llama folder): rank 2 on ``modules`` of every layer."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base)
    g = torch.Generator().manual_seed(seed)
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim * cfg.num_key_value_heads
    shapes = {"q_proj": (cfg.head_dim * cfg.num_attention_heads, d), "v_proj": (h, d), "down_proj": (d, f)}
    tensors = {}
    for layer in range(cfg.num_hidden_layers):
        for m in modules:
            out, inp = shapes[m]
            part = "mlp" if m == "down_proj" else "self_attn"
            name = f"model.layers.{layer}.{part}.{m}"
            tensors[f"{name}.lora_A"] = torch.randn(2, inp, generator=g)
            tensors[f"{name}.lora_B"] = torch.randn(out, 2, generator=g) * 0.05
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / loading.ADAPTER_FILE), metadata={"base": str(base), "scale": "2.0"})
    return folder


def _count_merges(monkeypatch):
    calls = []
    real = adapter.merge_lora

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(adapter, "merge_lora", counted)
    return calls


def _same_weights(a, b):
    sa, sb = a.original_model.state_dict(), b.original_model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_checksum_is_remembered_until_the_file_changes(tmp_path, cache_root, monkeypatch):
    import hashlib

    path = tmp_path / "weights.bin"
    path.write_bytes(b"version one")
    _old(path)
    hashed = []
    real = cache.sha256_of
    monkeypatch.setattr(cache, "sha256_of", lambda p: hashed.append(p) or real(p))
    assert cache.file_sha256(path) == hashlib.sha256(b"version one").hexdigest()
    assert cache.file_sha256(path) == hashlib.sha256(b"version one").hexdigest()
    assert len(hashed) == 1  # the second answer was read back
    path.write_bytes(b"version two")  # same size, new content
    _old(path, 30)
    assert cache.file_sha256(path) == hashlib.sha256(b"version two").hexdigest()
    assert len(hashed) == 2


def test_a_file_written_within_the_racy_window_is_never_remembered(tmp_path, cache_root):
    import hashlib

    path = tmp_path / "weights.bin"
    for text in (b"aaaa", b"bbbb", b"cccc"):  # rewrites within one clock tick can share a modification time
        path.write_bytes(text)
        assert cache.file_sha256(path) == hashlib.sha256(text).hexdigest()
    assert not (cache_root / "sha256").exists()


def test_the_merge_is_kept_atomically_and_read_back_bit_for_bit(tiny_model_dirs, tmp_path, cache_root, monkeypatch):
    base = tiny_model_dirs["llama"]
    chat = _adapter(tmp_path / "chat", base, seed=0)
    merges = _count_merges(monkeypatch)
    fresh = load_chat_model(chat, device="cpu")  # merges, and keeps the merge
    assert len(merges) == 1
    [kept] = list((cache_root / "merged").iterdir())  # one folder, no temporary beside it
    assert kept.name.startswith("chat-") and (kept / cache.MERGED_FILE).is_file()

    def no_merging(*a, **k):
        raise AssertionError("merged again instead of reading the kept merge")

    monkeypatch.setattr(adapter, "merge_lora", no_merging)
    again = load_chat_model(chat, device="cpu")
    assert _same_weights(fresh, again)
    with torch.no_grad():
        assert torch.equal(fresh(IDS), again(IDS))
    plain = load_chat_model(base, device="cpu")  # the adapter changes the numbers at all
    with torch.no_grad():
        assert not torch.allclose(plain(IDS), again(IDS), atol=1e-3)


def test_a_retrained_adapter_or_changed_base_is_another_key(tiny_model_dirs, tmp_path, cache_root, monkeypatch):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dirs["llama"], base)
    for f in base.iterdir():
        _old(f)
    chat = _adapter(tmp_path / "chat", base, seed=0)
    merges = _count_merges(monkeypatch)
    first = load_chat_model(chat, device="cpu")
    _adapter(chat, base, seed=1)  # retrained: same names and shapes, other numbers
    second = load_chat_model(chat, device="cpu")
    assert len(merges) == 2 and len(list((cache_root / "merged").iterdir())) == 2
    with torch.no_grad():
        assert not torch.equal(first(IDS), second(IDS))
    with monkeypatch.context() as m:
        m.setattr(loading, "read_merged", lambda *a, **k: False)  # today's route: merge at every load
        with torch.no_grad():
            assert torch.equal(load_chat_model(chat, device="cpu")(IDS), second(IDS))
    merges.clear()
    from safetensors.torch import load_file

    weights = load_file(str(base / "model.safetensors"))
    weights = {k: v * 1.01 if k.endswith("norm.weight") else v for k, v in weights.items()}
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    _old(base / "model.safetensors", 10)
    load_chat_model(chat, device="cpu")
    assert len(merges) == 1 and len(list((cache_root / "merged").iterdir())) == 3


def test_a_damaged_or_unwritable_merge_cache_is_merged_again(
    tiny_model_dirs, tmp_path, cache_root, monkeypatch, caplog
):
    from persona_gate.io import DISK_FULL_AT_WRITE

    chat = _adapter(tmp_path / "chat", tiny_model_dirs["llama"], seed=0)
    merges = _count_merges(monkeypatch)
    first = load_chat_model(chat, device="cpu")
    [kept] = list((cache_root / "merged").iterdir())
    (kept / cache.MERGED_FILE).write_bytes(b"broken")
    second = load_chat_model(chat, device="cpu")
    assert len(merges) == 2 and "unreadable" in caplog.text
    assert _same_weights(first, second)
    load_chat_model(chat, device="cpu")
    assert len(merges) == 2  # the damaged file was rewritten
    shutil.rmtree(cache_root / "merged")
    monkeypatch.setenv(DISK_FULL_AT_WRITE, "1")  # every write fails as on a full disk
    third = load_chat_model(chat, device="cpu")
    assert len(merges) == 3 and "could not cache the merged weights" in caplog.text
    assert not (cache_root / "merged").exists() or not any((cache_root / "merged").iterdir())
    assert _same_weights(first, third)


def test_a_big_merge_is_not_kept(tiny_model_dirs, tmp_path, cache_root, monkeypatch):
    chat = _adapter(tmp_path / "chat", tiny_model_dirs["llama"], seed=0)
    hashed = []
    real = loading.file_sha256
    monkeypatch.setattr(loading, "file_sha256", lambda p: hashed.append(p) or real(p))
    monkeypatch.setattr(loading, "MERGED_MAX_BYTES", 1000)  # the stand-in's merge is 3 x 3 layers x 16 KB
    load_chat_model(chat, device="cpu")
    assert not (cache_root / "merged").exists() and hashed == []  # nor its base's weights hashed
    monkeypatch.setattr(loading, "MERGED_MAX_BYTES", 10**6)
    load_chat_model(chat, device="cpu")
    assert (cache_root / "merged").is_dir() and hashed


def _tokenizer_facts(tok):
    texts = ["hello there, how are you", "<bos>a<eos>b", "  spaces\tand ünïcödé", ""]
    return {
        "class": type(tok).__name__,
        "backend": tok.backend_tokenizer.to_str(),
        "init": {k: str(v) for k, v in tok.init_kwargs.items() if k != "name_or_path"},
        "added": str(tok.added_tokens_decoder),
        "special": str(tok.special_tokens_map),
        "padding": tok.padding_side,
        "ids": [tok(t)["input_ids"] for t in texts] + [tok(t, add_special_tokens=False)["input_ids"] for t in texts],
    }


def test_a_gguf_models_tokenizer_is_read_once_and_is_the_bridges_own(
    tiny_model_dirs, tmp_path, cache_root, monkeypatch
):
    """The bridge used to re-read the tokenizer with ``add_bos_token=True``; reading it so at once
    gives the tokenizer that reload gave, and the bridge keeps it."""
    from transformer_lens.utilities.tokenize_utils import get_tokenizer_with_bos
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_model_dirs["gemma3"]
    monkeypatch.setattr(
        loading,
        "_dequantise",
        lambda path, dtype: (
            AutoModelForCausalLM.from_pretrained(src, dtype=dtype),
            AutoTokenizer.from_pretrained(src),
        ),
    )
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"stand-in weights")
    first = load_chat_model(gguf, device="cpu")  # de-quantises and caches
    reads = []
    real = AutoTokenizer.from_pretrained
    with monkeypatch.context() as m:
        m.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: reads.append(a) or real(*a, **k))
        second = load_chat_model(gguf, device="cpu")
    assert len(reads) == 1
    folder = loading.gguf_cache_folder(gguf, torch.float32)
    reloaded = get_tokenizer_with_bos(AutoTokenizer.from_pretrained(folder))  # what the bridge did before
    assert _tokenizer_facts(second.tokenizer) == {
        **_tokenizer_facts(reloaded),
        "padding": second.tokenizer.padding_side,
    }
    with torch.no_grad():
        assert torch.equal(first(IDS), second(IDS))


@pytest.mark.parametrize("cls", ["TokenizersBackend", "GemmaTokenizer"])
def test_completing_the_tokenizer_config_changes_nothing_but_the_reading(tiny_model_dirs, tmp_path, cls):
    from transformers import AutoTokenizer

    plain, completed = tmp_path / "plain", tmp_path / "completed"
    for d in (plain, completed):
        d.mkdir()
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny_model_dirs["gemma3"] / f, d / f)
        settings = json.loads((d / "tokenizer_config.json").read_text())
        if cls == "GemmaTokenizer":  # Gemma's class rebuilds the BPE from the vocabulary, and needs an unknown token
            settings["unk_token"] = "<pad>"
        (d / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": cls}))
    assert adapter.complete_tokenizer_config(completed)
    assert not adapter.complete_tokenizer_config(completed)  # once
    added = json.loads((completed / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {v["content"] for v in added.values()} >= {"<bos>", "<eos>", "<pad>"}
    for bos in (False, True):
        a = AutoTokenizer.from_pretrained(plain, add_bos_token=bos)
        b = AutoTokenizer.from_pretrained(completed, add_bos_token=bos)
        assert type(a).__name__ == cls and _tokenizer_facts(a) == _tokenizer_facts(b)


def test_progress_false_hides_the_loading_bar_and_restores_it(tiny_model_dirs, capfd):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    load_chat_model(tiny_model_dirs["llama"], device="cpu", progress=False)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled() == was
    hf_logging.enable_progress_bar()
    try:
        load_chat_model(tiny_model_dirs["llama"], device="cpu")
        assert "Loading weights" in capfd.readouterr().err  # shown by default
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
