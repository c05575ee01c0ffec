"""Out of memory and low precision in the grid engine (persona_gate.grid.prefix / run).

Faults are injected on CPU: a pre-hook on every block raises ``torch.OutOfMemoryError`` (or the
CPU allocator's ``RuntimeError``) whenever a forward holds more than N rows. The engine halves
the batch, or the cells run side by side, and retries only the unfinished cells: every cell is
reported once, the numbers equal a run started at the reduced sizes (``torch.equal``), the sizes
go into provenance, and when even one row fails the error is one named line. In bfloat16 a
non-finite logit stops the run naming the layer, the hook site and the dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from faults import oom_above

import persona_gate as pg
import persona_gate.grid.prefix as prefix
import persona_gate.models.loading as loading
from persona_gate.core.interventions import Ablate, Steer
from persona_gate.errors import MemoryExhaustedError, NonFiniteError
from persona_gate.grid import GridSpec, Scored, run_grid
from persona_gate.grid.prefix import cell_logprobs
from persona_gate.grid.store import MemoryStore

pytestmark = pytest.mark.usefixtures("one_thread")
CPU_OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456789 bytes."


@pytest.fixture(scope="module")
def setup(tiny_model_dirs):
    model = pg.load_chat_model(tiny_model_dirs["llama"], device="cpu")  # its own: provenance notes stay here
    grid = pg.standard_prompts(n_per_group=4, seed=0)
    pr = pg.fit_persona_and_refusal(model, grid, progress=False)
    prompts = [p for p in grid if p.group == "safe/harmful"]
    return model, pr, prompts


@pytest.fixture(autouse=True)
def fresh_record(setup):
    loading._BATCH_USED.pop(setup[0], None)
    yield
    loading._BATCH_USED.pop(setup[0], None)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _cells(pr):
    # (3 layers) layer 0: one chain, run alone; layer 1: two chains side by side, a window with a
    # nested one; a no-op
    return [
        [Steer(pr.persona, 2.0, layers=[0])],
        [Steer(pr.persona, 1.0, layers=[1])],
        [Steer(pr.persona, -3.0, layers=[1])],
        [Ablate(pr.persona, layers=range(1, 3))],
        [Ablate(pr.persona, layers=range(1, 2))],
        [],
    ]


def _run(model, prompts, cells, **kw):
    seen: list[tuple[int, torch.Tensor]] = []
    clean, _ = cell_logprobs(model, prompts, cells, on_cell=lambda i, lp, c: seen.append((i, lp)), **kw)
    return clean, seen


@pytest.mark.parametrize("kind", ["cuda", "cpu"])
def test_halving_retries_only_unfinished_cells_and_equals_a_run_at_the_reduced_sizes(setup, monkeypatch, kind):
    model, pr, prompts = setup
    cells = _cells(pr)
    heads: list[list[int]] = []
    original = prefix._run_chains

    def spy(model, rec, chains, *args):
        heads.append([ch.head for ch in chains])
        return original(model, rec, chains, *args)

    monkeypatch.setattr(prefix, "_run_chains", spy)
    error = (lambda: torch.OutOfMemoryError("sim")) if kind == "cuda" else (lambda: RuntimeError(CPU_OOM))
    hooks_before = _hooks(model)
    with oom_above(model, 2, error):
        clean, seen = _run(model, prompts, cells, batch_size=4)
    assert _hooks(model) == hooks_before
    assert sorted(i for i, _ in seen) == list(range(len(cells)))  # every cell reported exactly once
    used = pg.provenance(model)["batch_size_used"]
    assert used["grid"] == 2  # the clean run failed at 4 rows
    # the layer-0 cell ran alone at batch 2 and finished before the tiled layer-1 chunk failed: never again
    assert sum(0 in h for h in heads) == 2  # once per batch of two prompts

    ref_clean, ref = _run(model, prompts, cells, batch_size=2, max_tokens=used["grid_max_tokens"])
    assert torch.equal(clean, ref_clean)
    for (i, lp), (j, lp_ref) in zip(sorted(seen, key=lambda t: t[0]), sorted(ref, key=lambda t: t[0])):
        assert i == j and torch.equal(lp, lp_ref)


def test_a_run_without_fault_records_nothing_and_is_unchanged(setup):
    model, pr, prompts = setup
    cells = _cells(pr)
    clean, got = cell_logprobs(model, prompts, cells, batch_size=4)
    assert "batch_size_used" not in pg.provenance(model)
    with oom_above(model, 100):  # a fault that never fires changes nothing
        clean2, got2 = cell_logprobs(model, prompts, cells, batch_size=4)
    assert torch.equal(clean, clean2) and all(torch.equal(a, b) for a, b in zip(got, got2))


def test_run_grid_stores_each_cell_once_after_a_retry(setup):
    model, pr, prompts = setup
    scored = {(i,): Scored("p", tuple(c)) for i, c in enumerate(_cells(pr))}
    spec = GridSpec("oom", scored, prompts={"p": prompts}, derive=lambda k, lp, clean: {"lp": lp})
    store, puts = MemoryStore(), []
    put = store.put
    store.put = lambda key, value: (puts.append(key), put(key, value))  # type: ignore[method-assign]
    with oom_above(model, 1):
        res = run_grid(model, spec, store=store, batch_size=4)
    assert sorted(puts) == sorted(scored)  # no cell stored twice
    used = pg.provenance(model)["batch_size_used"]
    assert used["grid"] == 1
    ref = run_grid(model, spec, batch_size=1, max_tokens=used["grid_max_tokens"])
    assert all(torch.equal(res[k]["lp"], ref[k]["lp"]) for k in scored)


def test_even_batch_one_fails_with_one_named_line(setup):
    model, pr, prompts = setup
    hooks_before = _hooks(model)
    with oom_above(model, 0), pytest.raises(MemoryExhaustedError) as info:
        cell_logprobs(model, prompts, _cells(pr), batch_size=4)
    msg = str(info.value)
    assert "\n" not in msg and "batch size 1" in msg
    assert "smaller dtype" in msg and "device_map='auto'" in msg and "fewer or shorter prompts" in msg
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert _hooks(model) == hooks_before


def test_other_errors_are_not_retried(setup):
    model, pr, prompts = setup
    with oom_above(model, 0, lambda: RuntimeError("shape mismatch")), pytest.raises(RuntimeError, match="shape"):
        cell_logprobs(model, prompts, _cells(pr), batch_size=4)
    assert "batch_size_used" not in pg.provenance(model)


@dataclass(frozen=True)
class _Overflow:
    """An intervention that overflows the residual stream after block ``layer``."""

    layer: int

    def hooks(self, model):
        return [(f"blocks.{self.layer}.hook_resid_post", lambda x, hook: x * float("inf"))]


def test_bfloat16_non_finite_logits_name_layer_site_and_dtype(tiny_model_dirs):
    model = pg.load_chat_model(tiny_model_dirs["llama"], device="cpu", dtype="bfloat16")
    prompts = pg.standard_prompts(n_per_group=2, seed=0)[:3]
    with pytest.raises(NonFiniteError) as info:
        cell_logprobs(model, prompts, [[], [_Overflow(2)]])
    msg = str(info.value)
    assert "layer 2" in msg and "blocks.2.hook_resid_post" in msg and "bfloat16" in msg and "\n" not in msg
    with pytest.raises(NonFiniteError, match="layer 1 .*bfloat16"):
        cell_logprobs(model, prompts, [[]], base=[_Overflow(1)])  # in the clean run
