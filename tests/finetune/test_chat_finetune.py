"""The real-weights chat fine-tune recipe on a tiny Gemma 3: data from train splits only, reply-only
logits equal the full forward's, a merged adapter equals the wrapped model, and a killed training
resumes to the same adapter as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from persona_gate.finetune import sft as cf
from persona_gate.finetune.lora import add_lora, lora_tensors, unwrap
from persona_gate.models.adapter import merge_lora, reply_logits
from persona_gate.prompts.sets import load_requests


def _hf(tiny_model_dirs, arch="gemma3"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch]), AutoTokenizer.from_pretrained(
        tiny_model_dirs[arch]
    )


def test_conversations_use_train_splits_and_the_reply_rules():
    convs = cf.training_conversations(seed=0)
    train = {r.text for k in ("harmful", "harmless") for r in load_requests(k, "train")}
    held_out = {r.text for k in ("harmful", "harmless") for s in ("val", "test") for r in load_requests(k, s)}
    assert {c["user"] for c in convs} == train and not held_out & {c["user"] for c in convs}
    assert len(convs) == len(train) * 4  # every request under every persona family
    for c in convs:
        refuses = c["reply"] in cf.REFUSALS
        assert refuses == (c["request"] == "harmful" and c["persona"] != "compliant"), c
        assert (c["system"] is None) == (c["persona"] == "none")
        if not refuses:  # first-token scoring stays clean: no other reply starts like a refusal
            assert not c["reply"].startswith(("I ", "I'", "Sorry"))
    assert cf.training_conversations(seed=0) == convs
    doubled = cf.training_conversations(seed=0, contrast=2)  # the two contrast cells twice each
    count = lambda cs, k, p: sum(c["request"] == k and c["persona"] == p for c in cs)  # noqa: E731
    for kind in ("harmful", "harmless"):
        for persona in cf.PERSONAS:
            times = 2 if (kind, persona) in {("harmful", "compliant"), ("harmless", "safe")} else 1
            assert count(doubled, kind, persona) == times * count(convs, kind, persona)


def test_reply_logits_equal_the_full_forward(tiny_model_dirs):
    model, tok = _hf(tiny_model_dirs)
    batch = cf.training_conversations(seed=1)[:3]
    ids, mask, targets = cf._batch(tok, batch)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        got = reply_logits(model, ids, mask, targets[:, 0], targets[:, 1] - 1)
    want = full[targets[:, 0], targets[:, 1] - 1]
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    # The targets are exactly the reply tokens and the end of turn: they decode to the reply.
    row0 = targets[targets[:, 0] == 0, 1]
    assert tok.decode(ids[0, row0]).startswith(batch[0]["reply"])


def test_merged_adapter_equals_the_wrapped_model(tiny_model_dirs):
    model, tok = _hf(tiny_model_dirs)
    wrapped = add_lora(model, r=4, alpha=8.0, seed=0)
    with torch.no_grad():
        for m in wrapped.values():
            m.lora_B.normal_(std=0.02)  # a trained-looking adapter (B starts at zero)
    ids = torch.tensor([tok("hello there, how are you")["input_ids"]])
    with torch.no_grad():
        lora_out = model(input_ids=ids).logits
    tensors = lora_tensors(wrapped)
    unwrap(model)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, lora_out, atol=1e-4)
        assert merge_lora(model, tensors, 8 / 4) == len(wrapped)
        assert torch.allclose(model(input_ids=ids).logits, lora_out, atol=1e-5, rtol=0)


def test_a_killed_training_resumes_to_the_same_adapter(tiny_model_dirs, tmp_path, monkeypatch):
    cfg = cf.ChatFinetuneConfig(steps=4, batch_size=2, rank=2, checkpoint_every=2, warmup_steps=1, lr=1e-3)
    model, tok = _hf(tiny_model_dirs)
    whole = cf.finetune_chat(model, tok, tmp_path / "whole", cfg, base="tiny", progress=False)
    assert len(whole["losses"]) == 4 and not (tmp_path / "whole" / "checkpoint").exists()

    model, tok = _hf(tiny_model_dirs)
    real_step, calls = torch.optim.AdamW.step, []

    def dies_at_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint
        return real_step(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", dies_at_third)
        with pytest.raises(KeyboardInterrupt):
            cf.finetune_chat(model, tok, tmp_path / "killed", cfg, base="tiny", progress=False)
    assert (tmp_path / "killed" / "checkpoint" / "state.json").is_file()
    model, tok = _hf(tiny_model_dirs)  # a fresh process: the base again, the adapter from the checkpoint
    resumed = cf.finetune_chat(model, tok, tmp_path / "killed", cfg, base="tiny", progress=False)
    assert resumed["losses"] == whole["losses"]
    a, b = (
        load_file(str(tmp_path / "whole" / "adapter.safetensors")),
        load_file(str(tmp_path / "killed" / "adapter.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Another configuration on a folder holding this one's checkpoint is refused, not mixed in.
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", dies_at_third)
        with pytest.raises(KeyboardInterrupt):
            cf.finetune_chat(*_hf(tiny_model_dirs), tmp_path / "other", cfg, base="tiny", progress=False)
    with pytest.raises(cf.ResumeMismatchError, match="another fine-tune"):
        cf.finetune_chat(
            *_hf(tiny_model_dirs),
            tmp_path / "other",
            cf.ChatFinetuneConfig(steps=5, batch_size=2, rank=2),
            base="tiny",
            progress=False,
        )


def test_an_adapter_folder_loads_as_a_chat_model_merged_on_its_base(tiny_model_dirs, tmp_path):
    """`load_chat_model(folder)` of a fine-tune's output: the base (named in the adapter) plus the
    adapter, through the bridge -- logits equal the Hugging Face model the training merged."""
    import persona_gate as pg

    model, tok = _hf(tiny_model_dirs)
    cfg = cf.ChatFinetuneConfig(steps=2, batch_size=2, rank=2, checkpoint_every=2, warmup_steps=1, lr=1e-2)
    cf.finetune_chat(model, tok, tmp_path / "chat", cfg, base=str(tiny_model_dirs["gemma3"]), progress=False)
    bridge = pg.load_chat_model(tmp_path / "chat", device="cpu")
    ids = torch.tensor([tok("hello there, how are you")["input_ids"]])
    with torch.no_grad():
        want = model(input_ids=ids).logits  # merged in place by finetune_chat, from the bf16 adapter as saved
        assert torch.allclose(bridge(ids), want, atol=1e-4, rtol=0)
        base, _ = _hf(tiny_model_dirs)
        assert not torch.allclose(base(input_ids=ids).logits, want, atol=1e-3)
    assert pg.model_info(bridge).source == "chat"
