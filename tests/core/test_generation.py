"""Generation under interventions: KV cache on == off, pads untouched, scopes respected."""

from __future__ import annotations

import pytest
import torch

from persona_gate import fit_persona_and_refusal, render_all, sites_for, standard_prompts
from persona_gate.core.activations import padded_batches
from persona_gate.core.generation import generate
from persona_gate.core.interventions import Ablate, AddBack, Steer, apply
from persona_gate.core.prompt_layout import prompt_layout


@pytest.fixture(scope="module")
def organism():
    from persona_gate import load_chat_model

    return load_chat_model("organism", device="cpu")


@pytest.fixture(scope="module")
def organism_dirs(organism):
    grid = standard_prompts(model=organism, n_per_group=24, seed=0)
    return fit_persona_and_refusal(organism, grid, progress=False)


def _specs(pr):
    return {
        "none": [],
        "steer_prompt": [Steer(pr.persona, alpha=4.0, layers=[2])],
        "steer_generated": [Steer(pr.persona, alpha=1.0, layers=[3], scope="generated")],
        "steer_both": [Steer(pr.persona, alpha=1.0, layers=[3], scope="both")],
        "ablate": [Ablate(pr.persona, source_layer=2)],
        "steer+addback": [Steer(pr.persona, alpha=4.0, layers=[2]), AddBack(pr.refusal, alpha=1.0, layers=[4])],
    }


@pytest.mark.parametrize("name", ["none", "steer_prompt", "steer_generated", "steer_both", "ablate", "steer+addback"])
def test_kv_cache_on_and_off_give_identical_greedy_tokens(organism, organism_dirs, name):
    prompts = standard_prompts(model=organism, n_per_group=3, split="test", seed=1)
    specs = _specs(organism_dirs)[name]
    with apply(organism, *specs) if specs else _null():
        cached = generate(organism, prompts, max_new_tokens=12, batch_size=5, use_kv_cache=True, progress=False)
    with apply(organism, *specs) if specs else _null():
        uncached = generate(organism, prompts, max_new_tokens=12, batch_size=5, use_kv_cache=False, progress=False)
    assert [g.token_ids for g in cached] == [g.token_ids for g in uncached]
    assert all(g.token_ids for g in cached)
    if specs:  # and the intervention really acted on the replies
        plain = generate(organism, prompts, max_new_tokens=12, batch_size=5, progress=False)
        assert [g.token_ids for g in cached] != [g.token_ids for g in plain]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_generation_matches_a_naive_argmax_loop_and_is_batch_invariant(organism):
    prompts = standard_prompts(model=organism, n_per_group=2, split="test", seed=3)
    batched = generate(organism, prompts, max_new_tokens=10, batch_size=8, progress=False)
    single = generate(organism, prompts, max_new_tokens=10, batch_size=1, progress=False)
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    eos = organism.tokenizer.eos_token_id
    for g, rp in zip(batched[:3], render_all(organism.tokenizer, prompts[:3])):
        ids = torch.tensor([rp.input_ids])
        with torch.no_grad():
            for _ in range(10):
                nxt = organism(ids)[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], 1)
                if int(nxt) == eos:
                    break
        assert list(g.token_ids) == ids[0, len(rp.input_ids) :].tolist()


def test_the_organism_refuses_and_steering_switches_it_off(organism, organism_dirs):
    from persona_gate.organism.corpus import is_refusal

    harmful = [
        p for p in standard_prompts(model=organism, n_per_group=8, split="test", seed=2) if p.group == "safe/harmful"
    ]
    base = generate(organism, harmful, max_new_tokens=16, progress=False)
    with apply(organism, Steer(organism_dirs.persona, alpha=4.0, layers=[2])):
        steered = generate(organism, harmful, max_new_tokens=16, progress=False)
    assert sum(is_refusal(g.text) for g in base) >= 7
    assert sum(is_refusal(g.text) for g in steered) <= 2


@pytest.mark.parametrize("scope", ["prompt", "both"])
def test_pad_positions_are_never_touched(tiny_models, scope):
    model = tiny_models["qwen2"]
    grid = standard_prompts(n_per_group=2, seed=0)
    pr = fit_persona_and_refusal(model, grid, progress=False)
    rendered = render_all(model.tokenizer, grid[:4])
    pb = next(padded_batches(rendered, 4, model.tokenizer.pad_token_id))
    pads = pb.attention_mask == 0
    assert pads.any()
    seen = {}

    def capture(x, hook):
        seen["x"] = x.detach().clone()

    def run(*specs):
        with apply(model, *specs) if specs else _null(), model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", capture)]):
            with prompt_layout(pb.attention_mask), torch.no_grad():
                model(pb.input_ids, attention_mask=pb.attention_mask)
        return seen["x"]

    clean = run()
    steered = run(Steer(pr.persona, alpha=3.0, layers=[1], scope=scope))
    ablated = run(Ablate(pr.persona, layers=[1], scope=scope))
    for out in (steered, ablated):
        assert torch.equal(out[pads], clean[pads])
        assert not torch.allclose(out[~pads], clean[~pads])


def test_scope_generated_leaves_the_prompt_alone(tiny_models):
    from persona_gate import cache_activations

    model = tiny_models["llama"]
    grid = standard_prompts(n_per_group=2, seed=0)
    pr = fit_persona_and_refusal(model, grid, progress=False)
    sites = sites_for(model, [2])
    clean = cache_activations(model, grid, sites, "mean:prompt", progress=False)
    with apply(model, Steer(pr.persona, alpha=5.0, layers=[1], scope="generated")):
        steered = cache_activations(model, grid, sites, "mean:prompt", progress=False)
    assert torch.equal(clean.acts, steered.acts)
