"""Steering and ablation: exact maths at the hook, clean-up on errors, and loud no-ops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from persona_gate import cache_activations, fit_persona_and_refusal, sites_for, standard_prompts
from persona_gate.core.interventions import Ablate, Steer, apply
from persona_gate.errors import HookNotFiredError, InterventionError, LayerOutOfRangeError
from persona_gate.scoring.metrics import first_token_logprobs, refusal_logodds, refusal_rate, refusal_token_ids


@pytest.fixture(scope="module")
def fitted(tiny_models):
    grid = standard_prompts(n_per_group=4, seed=0)
    return {a: fit_persona_and_refusal(m, grid, progress=False) for a, m in tiny_models.items()}, grid


def _hooks_left(model) -> int:
    return sum(len(hp._forward_hooks) for hp in model.hook_dict.values())


def test_ablation_zeroes_the_projection_downstream_of_the_hook(tiny, arch, fitted):
    pr, grid = fitted[0][arch], fitted[1]
    layer = 1
    sites = sites_for(tiny, [layer])
    with apply(tiny, Ablate(pr.persona, layers=[layer], source_layer=layer)) as report:
        # Read the same hook point after the ablation hook: the hook we add runs first.
        store = cache_activations(tiny, grid, sites, "mean:prompt", progress=False)
    proj = store.acts[:, 0].double() @ pr.persona.at(layer).double()
    assert proj.abs().max() <= 1e-4
    assert report.calls == {f"blocks.{layer}.hook_resid_pre": 1}


def test_steering_shifts_the_hooked_activation_by_alpha_times_the_raw_direction(tiny, arch, fitted):
    pr, grid = fitted[0][arch], fitted[1]
    sites = sites_for(tiny, [2])
    base = cache_activations(tiny, grid, sites, "last", progress=False)
    for units, scale in (("raw", float(pr.persona.raw_norms[2])), ("unit", 1.0)):
        with apply(tiny, Steer(pr.persona, alpha=1.5, layers=[2], units=units)):
            steered = cache_activations(tiny, grid, sites, "last", progress=False)
        expect = base.acts[:, 0] + 1.5 * scale * pr.persona.at(2)
        assert (steered.acts[:, 0] - expect).abs().max() <= 1e-4


def test_alpha_zero_is_the_identity_and_hooks_are_removed(tiny, fitted):
    pr = next(iter(fitted[0].values()))
    tokens = torch.tensor([[5, 6, 7, 8]])
    before = tiny(tokens)
    with apply(tiny, Steer(pr.persona, alpha=0.0, layers=[1, 2])):
        during = tiny(tokens)
    assert torch.equal(before, during)
    assert _hooks_left(tiny) == 0


def test_hooks_are_removed_when_the_body_raises(tiny, fitted):
    pr = next(iter(fitted[0].values()))
    with pytest.raises(ZeroDivisionError):
        with apply(tiny, Ablate(pr.persona, layers=[1, 2])):
            tiny(torch.tensor([[5, 6, 7]]))
            1 / 0
    assert _hooks_left(tiny) == 0
    assert torch.equal(tiny(torch.tensor([[5, 6, 7]])), tiny(torch.tensor([[5, 6, 7]])))


def test_a_hook_that_never_fires_raises(tiny, fitted):
    pr = next(iter(fitted[0].values()))
    with pytest.raises(HookNotFiredError, match="never fired"):
        with apply(tiny, Steer(pr.persona, alpha=1.0, layers=[1])):
            pass  # no forward inside the block
    with pytest.raises(LayerOutOfRangeError):
        with apply(tiny, Steer(pr.persona, alpha=1.0, layers=[9])):
            pass


def test_refusal_metrics_against_a_naive_softmax(tiny, fitted):
    grid = fitted[1][:6]
    ids = refusal_token_ids(tiny.tokenizer, ["I cannot help.", "Sorry, no.", "I will not."])
    assert len(ids) == len(set(ids)) and len(ids) <= 3
    lp = first_token_logprobs(tiny, grid, batch_size=4)
    from persona_gate import render_all

    for i, rp in enumerate(render_all(tiny.tokenizer, grid)):
        with torch.no_grad():
            logits = tiny(torch.tensor([rp.input_ids]))[0, -1].double()
        p = torch.softmax(logits, -1)[ids].sum()
        assert float(refusal_logodds(lp[i : i + 1], ids)) == pytest.approx(float(torch.log(p / (1 - p))), abs=1e-4)
    rate = refusal_rate(lp, ids)
    assert rate == float(torch.isin(lp.argmax(-1), torch.tensor(ids)).float().mean())


@settings(max_examples=25, deadline=None)
@given(d=st.integers(2, 12), seed=st.integers(0, 1000), alpha=st.floats(-5, 5))
def test_projection_properties(d, seed, alpha):
    """Pure maths of the two hooks on random tensors (no model)."""
    from persona_gate import DirectionSet, HookSite

    g = torch.Generator().manual_seed(seed)
    ds = DirectionSet.from_means(
        "x", [HookSite(0)], torch.randn(1, d, generator=g), torch.randn(1, d, generator=g), "p", "n", {}, "last"
    )

    class Cfg:
        n_layers, d_model = 1, d

    class Fake:  # the ChatModel surface, nothing behind it
        cfg = Cfg()
        hook_dict = {"blocks.0.hook_resid_pre": None}
        tokenizer, blocks = None, ()

        def hooks(self, *a, **k): ...

        def __call__(self, *a, **k): ...

        def parameters(self):
            return iter(())

    x = torch.randn(3, 5, d, generator=g)
    ((_, ablate),) = Ablate(ds).hooks(Fake())
    ((_, steer),) = Steer(ds, alpha=alpha).hooks(Fake())
    v = ds.vectors[0]
    assert (ablate(x, None) @ v).abs().max() <= 1e-5
    assert torch.allclose(ablate(ablate(x, None), None), ablate(x, None), atol=1e-5)  # idempotent
    assert torch.allclose(steer(x, None) @ v - x @ v, torch.full((3, 5), alpha * float(ds.raw_norms[0])), atol=1e-3)


def test_steering_is_linear_in_alpha_at_the_hooked_site(tiny, fitted):
    pr, grid = next(iter(fitted[0].values())), fitted[1]
    sites = sites_for(tiny, [2])
    base = cache_activations(tiny, grid, sites, "mean:user", progress=False).acts
    deltas = {}
    for a in (0.5, 1.0, -2.0):
        with apply(tiny, Steer(pr.persona, alpha=a, layers=[2])):
            deltas[a] = cache_activations(tiny, grid, sites, "mean:user", progress=False).acts - base
    assert torch.allclose(deltas[1.0], 2 * deltas[0.5], atol=1e-5)
    assert torch.allclose(deltas[-2.0], -2 * deltas[1.0], atol=1e-5)


def test_intervention_then_removal_is_bit_identical_to_a_clean_run(tiny, fitted):
    pr = next(iter(fitted[0].values()))
    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    clean = tiny(tokens)
    with apply(tiny, Steer(pr.persona, alpha=3.0, layers=[1]), Ablate(pr.refusal, layers=[2])):
        steered = tiny(tokens)
    assert not torch.equal(clean, steered)
    assert torch.equal(tiny(tokens), clean)


def test_caching_inside_apply_stops_early_without_a_false_alarm(tiny, fitted):
    pr, grid = next(iter(fitted[0].values())), fitted[1]
    with apply(tiny, Ablate(pr.persona, layers=[1, 2], source_layer=1)):
        store = cache_activations(tiny, grid, sites_for(tiny, [1]), "last", progress=False)  # stops before layer 2
    assert (store.acts[:, 0].double() @ pr.persona.at(1).double()).abs().max() <= 1e-4


def test_ablating_a_zero_direction_is_an_error(tiny, fitted):
    from persona_gate.errors import InterventionError

    pr = next(iter(fitted[0].values()))
    assert float(pr.refusal.raw_norms[0]) == 0  # the last token at resid_pre.0 is always the same embedding
    with pytest.raises(InterventionError, match="zero at every chosen layer"):
        Ablate(pr.refusal, layers=[0]).hooks(tiny)


def test_steering_a_zero_direction_is_an_error(tiny, arch, fitted):
    # resid_pre.0 at the last token is one template token's embedding for every prompt: no refusal direction.
    refusal = fitted[0][arch].refusal
    zero = [s.layer for s, r in zip(refusal.sites, refusal.raw_norms) if float(r) == 0]
    if not zero:
        pytest.skip("this architecture adds position embeddings at layer 0 (no zero direction)")
    with pytest.raises(InterventionError, match=f"no direction at layer {zero[0]}.*choose layers"):
        Steer(refusal, alpha=1.0, layers=[zero[0]]).hooks(tiny)


def test_plain_strings_are_user_messages(tiny):
    from persona_gate import ChatPrompt
    from persona_gate.scoring.metrics import first_token_logprobs

    texts = ["Plan a trip.", "Write a short poem about rain."]
    as_strings = first_token_logprobs(tiny, texts)
    as_prompts = first_token_logprobs(tiny, [ChatPrompt(system=None, user=t, group="user") for t in texts])
    assert torch.equal(as_strings, as_prompts)
