"""Hooks that survive and vanish: the ecosystem's silent-wrongness bugs, on every architecture of the matrix.

Each test runs every intervention (Steer, Ablate, AddBack, Guard) on every tiny architecture
(tests/archs.py) and checks one way an intervention could silently stop acting or leak:

* it still acts after ``model.run_with_cache`` inside its ``apply`` block (TransformerLens #1636);
* nothing is left on any hook point after the block, exited normally or by an exception (#1323);
* nested blocks: leaving the inner one restores exactly the outer one's hooks;
* KV-cached greedy generation equals uncached generation under it;
* a batch equals its prompts one by one (first-token log-probs within 1e-5).
"""

from __future__ import annotations

import pytest
import torch

from persona_gate import fit_persona_and_refusal, standard_prompts
from persona_gate.core.generation import generate
from persona_gate.core.interventions import Ablate, AddBack, Steer, apply
from persona_gate.guard.intervention import Guard
from persona_gate.scoring.metrics import first_token_logprobs

SPECS = ("steer", "ablate", "addback", "guard")


@pytest.fixture(scope="module")
def fitted(tiny_models):
    grid = standard_prompts(n_per_group=2, seed=0)
    cache: dict[str, object] = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = fit_persona_and_refusal(tiny_models[arch], grid, progress=False)
        return cache[arch]

    return get


def _spec(name: str, pr):
    if name == "steer":
        return Steer(pr.persona, alpha=4.0, layers=[1], scope="both")
    if name == "ablate":
        return Ablate(pr.persona, layers=[1, 2], source_layer=1)
    if name == "addback":
        return AddBack(pr.refusal, alpha=4.0, layers=[2], scope="both")
    # a cap below every projection, so that it engages at every position, and refusal re-added there
    return Guard(pr.persona, {1: -50.0, 2: -50.0}, refusal=pr.refusal, alpha=2.0)


def _hooks(model) -> int:
    """Hooks on every hook point and every module (forward and pre-forward; the bridge keeps some of its own)."""
    points = sum(len(hp._forward_hooks) + len(hp._forward_pre_hooks) for hp in model.hook_dict.values())
    modules = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return points + modules


def _prompts(n: int = 2):
    return standard_prompts(n_per_group=1, split="test", seed=1)[:n]


TOKENS = torch.tensor([[5, 6, 7, 8, 9, 10]])


@pytest.mark.parametrize("name", SPECS)
def test_an_intervention_still_acts_after_run_with_cache_inside_its_block(tiny, arch, fitted, name):
    spec = _spec(name, fitted(arch))
    start = _hooks(tiny)  # the bridge's own module hooks
    with torch.no_grad():
        clean = tiny(TOKENS)
        with apply(tiny, spec):
            before = tiny(TOKENS)
            cached_logits, _ = tiny.run_with_cache(TOKENS)
            after = tiny(TOKENS)
    assert not torch.allclose(before, clean, atol=1e-4)  # it acts ...
    assert torch.equal(before, after)  # ... still does after run_with_cache ...
    assert torch.allclose(cached_logits, before, atol=1e-5)  # ... and inside it
    assert _hooks(tiny) == start


@pytest.mark.parametrize("name", SPECS)
def test_nothing_is_left_on_any_hook_point_after_the_block(tiny, arch, fitted, name):
    spec = _spec(name, fitted(arch))
    start = _hooks(tiny)
    with torch.no_grad():
        clean = tiny(TOKENS)
        with apply(tiny, spec):
            assert _hooks(tiny) > start
            tiny(TOKENS)
        assert _hooks(tiny) == start
        with pytest.raises(RuntimeError, match="boom"):
            with apply(tiny, spec):
                tiny(TOKENS)
                raise RuntimeError("boom")
        assert _hooks(tiny) == start
        assert torch.equal(tiny(TOKENS), clean)


def test_nested_blocks_restore_the_outer_blocks_hooks(tiny, arch, fitted):
    pr = fitted(arch)
    outer, inner = _spec("steer", pr), _spec("guard", pr)
    start = _hooks(tiny)
    with torch.no_grad():
        with apply(tiny, outer):
            only_outer = tiny(TOKENS)
            n_outer = _hooks(tiny)
            with apply(tiny, inner):
                both = tiny(TOKENS)
            assert _hooks(tiny) == n_outer
            assert torch.equal(tiny(TOKENS), only_outer)
            with pytest.raises(KeyError):
                with apply(tiny, inner):
                    raise KeyError("inner fails")
            assert _hooks(tiny) == n_outer
            assert torch.equal(tiny(TOKENS), only_outer)
        assert _hooks(tiny) == start
    assert not torch.allclose(both, only_outer, atol=1e-4)


@pytest.mark.parametrize("name", SPECS)
def test_kv_cached_generation_equals_uncached_under_every_intervention(tiny, arch, fitted, name):
    spec = _spec(name, fitted(arch))
    prompts = _prompts(2)
    with apply(tiny, spec):
        cached = generate(tiny, prompts, max_new_tokens=5, batch_size=2, use_kv_cache=True, progress=False)
    with apply(tiny, spec):
        uncached = generate(tiny, prompts, max_new_tokens=5, batch_size=2, use_kv_cache=False, progress=False)
    assert [g.token_ids for g in cached] == [g.token_ids for g in uncached]
    assert all(g.token_ids for g in cached)


@pytest.mark.parametrize("name", SPECS)
def test_a_batch_equals_its_prompts_one_by_one_under_every_intervention(tiny, arch, fitted, name):
    spec = _spec(name, fitted(arch))
    prompts = _prompts(3)
    with apply(tiny, spec):
        batched = first_token_logprobs(tiny, prompts, batch_size=3)
    with apply(tiny, spec):
        single = torch.cat([first_token_logprobs(tiny, [p], batch_size=1) for p in prompts])
    assert (batched - single).abs().max() <= 1e-5
    assert not torch.allclose(batched, first_token_logprobs(tiny, prompts, batch_size=3), atol=1e-4)
