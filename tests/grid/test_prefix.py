"""Prefix reuse (persona_gate.grid.prefix): the new route against one full forward per cell.

On every tiny architecture, cells of steering, ablation (nested windows included), add-back
under a shared steering, and guard caps give the same refusal log-odds by both routes (<= 1e-5)
and the same greedy-first-token refusals; a cell with no intervention is the clean run bit for
bit; a hook outside the blocks falls back to a full forward; the cost planner counts exactly
the block work the engine does (block calls counted with hooks); the experiments give the same
results through either route.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import persona_gate as pg
from persona_gate.core.interventions import Ablate, AddBack, Steer, apply
from persona_gate.errors import ConfigError
from persona_gate.experiments import RefusalScorer, eval_groups, reintroduction, steering_sweep, window_projection
from persona_gate.grid.cost import cells_cost
from persona_gate.grid.prefix import cell_logprobs, plan_cells
from persona_gate.guard.intervention import Guard, token_projections
from persona_gate.scoring.metrics import first_token_logprobs, refusal_logodds, refusal_token_ids

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5


@pytest.fixture(scope="module")
def fitted(tiny_models):
    grid = pg.standard_prompts(n_per_group=4, seed=0)
    return {a: pg.fit_persona_and_refusal(m, grid, progress=False) for a, m in tiny_models.items()}, grid


def _cells(model, pr, grid):
    L = int(model.cfg.n_layers)
    rnd = pr.persona.random_like(7)
    taus = {
        layer: float(p.median()) for layer, p in token_projections(model, pr.persona, range(1, L), prompts=grid).items()
    }
    cells = [[Steer(pr.persona, alpha=a, layers=[k])] for k in range(1, L) for a in (1.5, -3.0)]
    cells += [[AddBack(pr.refusal, alpha=2.0, layers=[k])] for k in range(1, L)]
    cells += [[Ablate(d, layers=range(a, b + 1))] for d in (pr.persona, rnd) for a in range(L) for b in range(a, L)]
    cells += [[Guard(pr.persona, {k: taus[k] for k in range(a, L)})] for a in range(1, L)]
    cells += [[Steer(pr.persona, alpha=1.0, layers=[1]), Ablate(rnd, layers=range(1, L))], []]
    return cells


def _ids(model):
    return refusal_token_ids(model.tokenizer, ["I cannot", "Sorry", "No"])


@pytest.mark.parametrize("with_base", [False, True], ids=["clean", "under-steering"])
def test_prefix_reuse_equals_one_full_forward_per_cell(tiny, arch, fitted, with_base):
    prs, grid = fitted
    pr = prs[arch]
    prompts = [p for p in grid if p.group == "safe/harmful"]
    cells = _cells(tiny, pr, grid)
    base = [Steer(pr.persona, alpha=2.0, layers=[1])] if with_base else []
    clean_new, new = cell_logprobs(tiny, prompts, cells, base=base, batch_size=3)
    clean_old, old = cell_logprobs(tiny, prompts, cells, base=base, batch_size=3, reuse=False)
    assert torch.equal(clean_new, clean_old)
    # The reference route is what apply() + a forward per cell gives.
    with apply(tiny, *base, *cells[0]):
        assert torch.equal(old[0], first_token_logprobs(tiny, prompts, batch_size=3))
    ids = _ids(tiny)
    worst = max(float((refusal_logodds(a, ids) - refusal_logodds(b, ids)).abs().max()) for a, b in zip(new, old))
    assert worst <= TOL
    assert all(torch.equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(new, old))
    assert torch.equal(new[-1], clean_new)  # no intervention: the clean run, bit for bit
    plan, *_ = plan_cells(tiny, cells, base)
    assert plan.starts[-1] == plan.n_layers and not any(plan.full)


def test_windows_of_one_start_nest_and_run_fewer_blocks(tiny_models, fitted):
    model, pr = tiny_models["llama"], fitted[0]["llama"]
    L = int(model.cfg.n_layers)
    cells = [[Ablate(pr.persona, layers=range(0, b + 1))] for b in range(L)]
    plan, *_ = plan_cells(model, cells)
    # [0, L-1] runs every block; [0, b] leaves its run before block b + 1 and re-runs only the rest.
    assert list(plan.starts) == [b + 1 for b in range(L - 1)] + [0]
    # Windows of one start with another direction do not nest into them.
    other = [[Ablate(pr.persona.random_like(1), layers=range(0, 1))]]
    assert plan_cells(model, cells + other)[0].starts[-1] == 0


def test_the_cost_planner_counts_the_blocks_the_engine_runs(tiny_models, fitted):
    model, pr = tiny_models["gemma3"], fitted[0]["gemma3"]
    grid = fitted[1]
    prompts = [p for p in grid if p.group == "compliant/harmful"]
    cells = _cells(model, pr, grid)
    counted = {"block_tokens": 0, "head_rows": 0}

    def block_done(module, args, out):
        x = out[0] if isinstance(out, tuple) else out
        counted["block_tokens"] += x.shape[0] * x.shape[1]

    def head_done(module, args, out):
        counted["head_rows"] += out.numel() // out.shape[-1]

    handles = [b.register_forward_hook(block_done) for b in model.blocks] + [
        model.unembed.register_forward_hook(head_done)
    ]
    try:
        cell_logprobs(model, prompts, cells, batch_size=3)
    finally:
        for h in handles:
            h.remove()
    cost = cells_cost(model, prompts, cells, batch_size=3)
    assert (cost.block_tokens, cost.head_rows) == (counted["block_tokens"], counted["head_rows"])
    full = cells_cost(model, prompts, cells, batch_size=3, reuse=False)
    assert cost.block_tokens < 0.75 * full.block_tokens  # the reuse is real, not a relabelling


@dataclasses.dataclass(frozen=True)
class _EmbedShift:
    """An intervention outside the blocks: a shift of the token embedding."""

    shift: float

    def hooks(self, model):
        return [("hook_embed", lambda x, hook: x + self.shift)]


def test_a_hook_outside_the_blocks_falls_back_to_a_full_forward(tiny_models, fitted):
    model, grid = tiny_models["qwen2"], fitted[1]
    if "hook_embed" not in model.hook_dict:
        pytest.skip("this bridge names no hook_embed")
    prompts = [p for p in grid if p.group == "safe/harmless"]
    plan, *_ = plan_cells(model, [[_EmbedShift(0.1)]])
    assert plan.full == (True,)
    _, (lp,) = cell_logprobs(model, prompts, [[_EmbedShift(0.1)]])
    with apply(model, _EmbedShift(0.1)):
        assert torch.equal(lp, first_token_logprobs(model, prompts, batch_size=32))


def test_tiling_and_batches_do_not_change_the_numbers(tiny_models, fitted):
    model, pr = tiny_models["phi3"], fitted[0]["phi3"]
    prompts = [p for p in fitted[1] if p.group == "safe/harmful"]
    cells = _cells(model, pr, fitted[1])
    ids = _ids(model)
    _, one = cell_logprobs(model, prompts, cells, max_tokens=1)  # one cell per re-run
    _, many = cell_logprobs(model, prompts, cells, max_tokens=10**6)  # every cell of a layer at once
    assert max(float((refusal_logodds(a, ids) - refusal_logodds(b, ids)).abs().max()) for a, b in zip(one, many)) <= TOL


def test_bad_arguments_are_named_errors_before_work(tiny_models, fitted):
    model, pr = tiny_models["llama"], fitted[0]["llama"]
    prompts = fitted[1][:2]
    with pytest.raises(ConfigError, match="max_tokens"):
        cell_logprobs(model, prompts, [[Steer(pr.persona, 1.0, layers=[1])]], max_tokens=0)
    with pytest.raises(ConfigError, match="max_tokens"):
        cell_logprobs(model, prompts, [[Steer(pr.persona, 1.0, layers=[1])]], max_tokens=True)


def test_experiments_give_the_same_results_by_both_routes(organism_setup):
    model, pr, scorer, groups = organism_setup
    old = dataclasses.replace(scorer, reuse_prefix=False)
    runs = {
        "sweep": lambda s: steering_sweep(
            model, pr.persona, layers=[1, 3, 5], alphas=[0.0, 2.0, 4.0], scorer=s, groups=groups, progress=False
        ),
        "back": lambda s: reintroduction(
            model,
            pr.persona,
            pr.refusal,
            mode="steer",
            steer_layer=2,
            steer_alpha=4.0,
            scorer=s,
            groups=groups,
            progress=False,
        ),
        "windows": lambda s: window_projection(
            model, pr.persona, random_seeds=2, scorer=s, groups=groups, progress=False
        ),
    }
    for name, run in runs.items():
        a, b = run(scorer), run(old)
        ok = torch.isfinite(a["logodds"])
        assert torch.equal(ok, torch.isfinite(b["logodds"])), name
        assert float((a["logodds"][ok] - b["logodds"][ok]).abs().max()) <= TOL, name
        assert torch.equal(a["refused"][ok].bool(), b["refused"][ok].bool()), name
        assert a.baselines == b.baselines, name
        if "kl" in a.values:
            assert float((a["kl"] - b["kl"]).abs().max()) <= TOL


@pytest.fixture(scope="module")
def organism_setup():
    model = pg.load_chat_model("organism")
    pr = pg.fit_persona_and_refusal(model, n_per_group=24, progress=False)
    return model, pr, RefusalScorer.for_model(model), eval_groups(model, 6)


def test_a_cap_at_infinity_in_a_grid_is_the_clean_run(tiny_models, fitted):
    model, pr = tiny_models["gpt2"], fitted[0]["gpt2"]
    prompts = [p for p in fitted[1] if p.group == "compliant/harmless"]
    clean, (lp,) = cell_logprobs(model, prompts, [[Guard(pr.persona, {1: math.inf})]])
    assert torch.equal(clean, lp)
