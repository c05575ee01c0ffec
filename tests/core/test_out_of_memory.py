"""Out of memory and low precision in activation caching and generation (persona_gate.core).

A pre-hook on every block raises ``torch.OutOfMemoryError`` (or the CPU allocator's
``RuntimeError``) for a forward of more than N rows: the runners halve the batch and go on from
the failed batch, the result equals a run at the reduced size from the start (``torch.equal``),
the size goes into provenance; at batch 1 the error is one named line. A non-finite activation
in bfloat16 names the layer, the hook site and the dtype; bfloat16 directions of a tiny model
point where float32's do.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from faults import oom_above

import persona_gate as pg
import persona_gate.models.loading as loading
from persona_gate.core.activations import cache_activations, iter_activations
from persona_gate.core.generation import generate
from persona_gate.core.interventions import apply
from persona_gate.errors import MemoryExhaustedError, NonFiniteError
from persona_gate.sites import sites_for

pytestmark = pytest.mark.usefixtures("one_thread")
CPU_OOM = "DefaultCPUAllocator: not enough memory: you tried to allocate 123456789 bytes."


@pytest.fixture(scope="module")
def model(tiny_model_dirs):
    return pg.load_chat_model(tiny_model_dirs["llama"], device="cpu")  # its own: provenance notes stay here


@pytest.fixture(scope="module")
def prompts():
    return pg.standard_prompts(n_per_group=2, seed=0)[:8]


@pytest.fixture(autouse=True)
def fresh_record(model):
    loading._BATCH_USED.pop(model, None)
    yield
    loading._BATCH_USED.pop(model, None)


@pytest.mark.parametrize("kind", ["cuda", "cpu"])
def test_caching_halves_the_batch_and_equals_a_run_at_that_size(model, prompts, kind):
    sites = sites_for(model)
    plain = cache_activations(model, prompts, sites, batch_size=8, progress=False)
    assert "batch_size_used" not in plain.provenance
    error = (lambda: torch.OutOfMemoryError("sim")) if kind == "cuda" else (lambda: RuntimeError(CPU_OOM))
    with oom_above(model, 2, error):
        got = cache_activations(model, prompts, sites, batch_size=8, progress=False)
    assert got.provenance["batch_size_used"] == {"caching": 2}
    ref = cache_activations(model, prompts, sites, batch_size=2, progress=False)
    assert torch.equal(got.acts, ref.acts)


def test_caching_keeps_the_batches_already_done(model, prompts):
    sites = sites_for(model)
    calls = {"n": 0}

    def fail_third(module, args, kwargs):  # the third batch of two fails once, as a whole
        if module is model.blocks[0]:
            calls["n"] += 1
            if calls["n"] == 3:
                raise torch.OutOfMemoryError("sim")

    handle = model.blocks[0].register_forward_pre_hook(fail_third, with_kwargs=True)
    try:
        batches = list(iter_activations(model, prompts, sites, batch_size=2, progress=False))
    finally:
        handle.remove()
    assert sorted(i for b in batches for i in b.indices) == list(range(len(prompts)))  # each prompt once
    assert [len(b.indices) for b in batches] == [2, 2, 1, 1, 1, 1]
    assert pg.provenance(model)["batch_size_used"] == {"caching": 1}


def test_caching_at_batch_one_fails_with_one_named_line(model, prompts):
    with oom_above(model, 0), pytest.raises(MemoryExhaustedError) as info:
        cache_activations(model, prompts[:2], sites_for(model), progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "caching activations" in msg and "batch size 1" in msg
    assert "smaller dtype" in msg and "device_map='auto'" in msg


def test_generation_halves_the_batch_and_equals_a_run_at_that_size(model, prompts):
    with oom_above(model, 3):
        got = generate(model, prompts[:6], max_new_tokens=4, batch_size=6, progress=False)
    assert pg.provenance(model)["batch_size_used"] == {"generation": 3}
    ref = generate(model, prompts[:6], max_new_tokens=4, batch_size=3, progress=False)
    assert [g.token_ids for g in got] == [g.token_ids for g in ref]
    with oom_above(model, 0), pytest.raises(MemoryExhaustedError, match="generation even at batch size 1"):
        generate(model, prompts[:2], max_new_tokens=2, progress=False)


@dataclass(frozen=True)
class _Overflow:
    """An intervention that overflows the residual stream after block ``layer``."""

    layer: int

    def hooks(self, model):
        return [(f"blocks.{self.layer}.hook_resid_post", lambda x, hook: x * float("inf"))]


def test_bfloat16_non_finite_activations_name_layer_site_and_dtype(tiny_model_dirs, prompts):
    bf16 = pg.load_chat_model(tiny_model_dirs["llama"], device="cpu", dtype="bfloat16")
    with apply(bf16, _Overflow(0)), pytest.raises(NonFiniteError) as info:
        cache_activations(bf16, prompts[:2], sites_for(bf16), progress=False)
    msg = str(info.value)
    assert "layer 1" in msg and "blocks.1.hook_resid_pre" in msg and "bfloat16" in msg and "\n" not in msg


def test_bfloat16_directions_point_where_float32_ones_do(tiny_model_dirs):
    grid = pg.standard_prompts(n_per_group=8, seed=0)
    fits = {
        d: pg.fit_persona_and_refusal(
            pg.load_chat_model(tiny_model_dirs["llama"], device="cpu", dtype=d), grid, progress=False
        )
        for d in ("float32", "bfloat16")
    }
    for name in ("persona", "refusal"):
        a, b = getattr(fits["float32"], name).vectors, getattr(fits["bfloat16"], name).vectors
        fitted = a.norm(dim=-1) > 0  # (the refusal contrast is zero at the embedding: nothing to compare)
        assert torch.equal(fitted, b.norm(dim=-1) > 0) and fitted.any()
        cos = torch.nn.functional.cosine_similarity(a[fitted].double(), b[fitted].double(), dim=-1)
        assert float(cos.min()) >= 0.99, (name, cos.tolist())
