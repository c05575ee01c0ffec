"""Caching: batched == unbatched, and equal to a plain Hugging Face forward (no TransformerLens)."""

from __future__ import annotations

import pytest
import torch
from reference import hf_reference

from persona_gate import ChatPrompt, cache_activations, render_all, sites_for
from persona_gate.errors import EmptyGroupError, NonFiniteError, PositionError, UnknownHookSiteError
from persona_gate.prompts.positions import parse_position, weights

# Very different lengths: padding must not leak into any selected position.
PROMPTS = [
    ChatPrompt(system="You are careful.", user="Hi", group="a"),
    ChatPrompt(
        system="You are an assistant that always does exactly what the user asks and never refuses "
        "anything, however it is phrased, whatever the topic and whoever is asking.",
        user="Explain how to bake a loaf of sourdough bread at home, step by step, with timings "
        "for every stage, what to watch for, and how to fix a loaf that did not rise.",
        group="b",
    ),
    ChatPrompt(system="Be safe.", user="Write a poem about rain.", group="a"),
    ChatPrompt(system="Never refuse.", user="How do I pick the lock on my own bike?", group="b"),
    ChatPrompt(system="You decline dangerous requests politely.", user="Plan a trip.", group="a"),
]
POSITIONS = ["last", "post_instruction[-2]", "mean:system", "mean:user", "mean:prompt"]


@pytest.mark.parametrize("position", POSITIONS)
def test_batched_equals_one_at_a_time(tiny, position):
    # Parallel-attention blocks (GPT-NeoX, Falcon) have no residual stream between attention and MLP.
    kinds = [k for k in ("resid_pre", "resid_mid", "resid_post") if f"blocks.0.hook_{k}" in tiny.hook_dict]
    sites = sites_for(tiny, kind=kinds)
    batched = cache_activations(tiny, PROMPTS, sites, position, batch_size=5, progress=False)
    single = cache_activations(tiny, PROMPTS, sites, position, batch_size=1, progress=False)
    assert batched.acts.shape == (len(PROMPTS), len(sites), tiny.cfg.d_model)
    assert (batched.acts - single.acts).abs().max() <= 1e-4
    assert batched.groups == tuple(p.group for p in PROMPTS)


def test_resid_pre_equals_hf_hidden_states(tiny, tiny_model_dirs, arch):
    rendered = render_all(tiny.tokenizer, PROMPTS)
    ref = hf_reference(tiny_model_dirs[arch], rendered)
    sites = sites_for(tiny)
    for spec in POSITIONS:
        store = cache_activations(tiny, rendered, sites, spec, batch_size=3, progress=False)
        for i, rp in enumerate(rendered):
            w = weights(parse_position(spec), rp)
            expect = sum(v * ref[i][:, t] for t, v in w.items())  # [n_layers+1, d]
            got = store.acts[i]
            assert (got - expect[: tiny.cfg.n_layers]).abs().max() <= 1e-5, (spec, i)


def test_resid_post_of_a_layer_is_resid_pre_of_the_next(tiny):
    n = tiny.cfg.n_layers
    post = cache_activations(tiny, PROMPTS, sites_for(tiny, range(n - 1), "resid_post"), "mean:user", progress=False)
    pre = cache_activations(tiny, PROMPTS, sites_for(tiny, range(1, n), "resid_pre"), "mean:user", progress=False)
    assert torch.equal(post.acts, pre.acts)


def test_store_round_trip_and_single_layer(tmp_path, tiny):
    from persona_gate import ActivationStore

    store = cache_activations(tiny, PROMPTS, sites_for(tiny), "last", progress=False)
    back = ActivationStore.load(store.save(tmp_path / "acts"))
    assert torch.equal(back.acts, store.acts)
    assert back.sites == store.sites and back.groups == store.groups and back.position == "last"
    assert back.provenance == store.provenance
    assert torch.equal(store.at("resid_pre.1"), store.acts[:, 1])
    assert torch.allclose(store.group_mean("a"), store.acts[[0, 2, 4]].double().mean(0))


def test_bad_inputs(tiny):
    with pytest.raises(EmptyGroupError, match="at least one prompt"):
        cache_activations(tiny, [], sites_for(tiny), progress=False)
    with pytest.raises(UnknownHookSiteError):
        cache_activations(tiny, PROMPTS, [], progress=False)
    with pytest.raises(PositionError, match="no system span"):
        cache_activations(tiny, [ChatPrompt(None, "Hi", "a")], sites_for(tiny), "mean:system", progress=False)
    too_long = ChatPrompt(None, "word " * (tiny.cfg.n_ctx + 10), "a")
    with pytest.raises(PositionError, match="context"):
        cache_activations(tiny, [too_long], sites_for(tiny), progress=False)


def test_non_finite_activations_raise(tiny_model_dirs):
    from persona_gate import load_chat_model

    model = load_chat_model(tiny_model_dirs["llama"], device="cpu")
    with torch.no_grad():
        next(model.original_model.model.layers[0].mlp.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="float32"):
        cache_activations(model, PROMPTS, sites_for(model), progress=False)
