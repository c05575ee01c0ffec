"""The paper's experiments: exact numbers against plain-torch hooks on a bare HF model, and the
organism's three findings (loosely, so a retrained organism cannot silently break them)."""

from __future__ import annotations

import math

import pytest
import torch

from persona_gate import fit_persona_and_refusal, load_chat_model, render_all, standard_prompts
from persona_gate.core.interventions import Steer
from persona_gate.errors import DModelMismatchError, InterventionError, LayerOutOfRangeError, UnknownHookSiteError
from persona_gate.experiments import (
    RefusalScorer,
    eval_groups,
    extraction_sites,
    geometry,
    reintroduction,
    restoration,
    select_steering,
    steering_sweep,
    trait_directions,
    window_projection,
)

# ------------------------------------------------------------------ independent route: torch hooks


def _hf(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()


def _naive_logodds(hf, rendered, token_ids, pre_hooks):
    """First-token refusal log-odds, one unpadded prompt at a time, with torch pre-hooks on layers."""
    handles = [hf.model.layers[layer].register_forward_pre_hook(fn, with_kwargs=True) for layer, fn in pre_hooks]
    try:
        out = []
        with torch.no_grad():
            for rp in rendered:
                lp = torch.log_softmax(hf(torch.tensor([rp.input_ids])).logits[0, -1].double(), -1)
                p = lp[list(token_ids)].exp().sum()
                out.append(float(torch.log(p) - torch.log1p(-p)))
        return torch.tensor(out)
    finally:
        for h in handles:
            h.remove()


def _add(vec):
    def fn_kw(module, args, kwargs):
        if args:
            return (args[0] + vec,) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"] + vec
        return args, kwargs

    return fn_kw


def _project_out(v):
    def fn(module, args, kwargs):
        def proj(x):
            return x - (x @ v)[..., None] * v

        if args:
            return (proj(args[0]),) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = proj(kwargs["hidden_states"])
        return args, kwargs

    return fn


@pytest.fixture(scope="module")
def llama(tiny_model_dirs, tiny_models):
    model = tiny_models["llama"]
    grid = standard_prompts(n_per_group=6, seed=0)
    pr = fit_persona_and_refusal(model, grid, progress=False)
    scorer = RefusalScorer.for_model(model, phrases=["I cannot help.", "Sorry, no."])
    groups = eval_groups(model, 4, seed=1)
    return model, _hf(tiny_model_dirs["llama"]), pr, scorer, groups, grid


def test_refusal_direction_equals_plain_torch_hooks_on_hf(llama):
    model, hf, pr, _, _, grid = llama
    rendered = render_all(model.tokenizer, grid)
    sums = {
        g: torch.zeros(model.cfg.n_layers, model.cfg.d_model, dtype=torch.float64)
        for g in ("safe/harmful", "safe/harmless")
    }
    counts = dict.fromkeys(sums, 0)
    captured = {}

    def capture(layer):
        def fn(module, args, kwargs):
            captured[layer] = (args[0] if args else kwargs["hidden_states"])[0, -1].double()

        return fn

    handles = [
        hf.model.layers[layer].register_forward_pre_hook(capture(layer), with_kwargs=True)
        for layer in range(model.cfg.n_layers)
    ]
    with torch.no_grad():
        for rp in rendered:
            if rp.group in sums:
                hf(torch.tensor([rp.input_ids]))
                sums[rp.group] += torch.stack([captured[layer] for layer in range(model.cfg.n_layers)])
                counts[rp.group] += 1
    for h in handles:
        h.remove()
    diff = sums["safe/harmful"] / counts["safe/harmful"] - sums["safe/harmless"] / counts["safe/harmless"]
    ok = diff.norm(dim=-1) > 0
    assert (pr.refusal.raw_norms.double() - diff.norm(dim=-1)).abs().max() <= 1e-5
    assert (pr.refusal.vectors[ok].double() - diff[ok] / diff[ok].norm(dim=-1, keepdim=True)).abs().max() <= 1e-5


def test_steering_sweep_cells_equal_plain_torch_hooks(llama):
    model, hf, pr, scorer, groups, _ = llama
    sweep = steering_sweep(
        model, pr.persona, layers=[1, 2], alphas=(0.0, 2.0), scorer=scorer, groups=groups, progress=False
    )
    assert sweep.dims == ("request", "layer", "alpha", "example")
    rendered = render_all(model.tokenizer, groups["safe/harmful"])
    for layer in (1, 2):
        vec = 2.0 * pr.persona.raw_norms[layer] * pr.persona.vectors[layer]
        naive = _naive_logodds(hf, rendered, scorer.token_ids, [(layer, _add(vec))])
        ours = sweep.sel(request="harmful", layer=layer, alpha=2.0)["logodds"]
        assert (ours - naive).abs().max() <= 1e-4
    clean = _naive_logodds(hf, rendered, scorer.token_ids, [])
    assert (sweep.sel(request="harmful", layer=1, alpha=0.0)["logodds"] - clean).abs().max() <= 1e-4
    assert sweep.baselines["unsteered_harmful_logodds"] == pytest.approx(float(clean.mean()), abs=1e-3)


def test_window_projection_cells_equal_plain_torch_hooks(llama):
    model, hf, pr, scorer, groups, _ = llama
    wp = window_projection(
        model, pr.persona, windows=[(1, 2)], random_seeds=2, scorer=scorer, groups=groups, progress=False
    )
    rendered = render_all(model.tokenizer, groups["compliant/harmful"])
    for name, d in (("persona", pr.persona), ("random1", pr.persona.random_like(1))):
        hooks = [(layer, _project_out(d.vectors[layer])) for layer in (1, 2)]
        naive = _naive_logodds(hf, rendered, scorer.token_ids, hooks)
        assert (wp.sel(direction=name, start=1, end=2)["logodds"] - naive).abs().max() <= 1e-4
    assert torch.isnan(wp.sel(direction="persona", start=2, end=1)["logodds"]).all()


def test_reintroduction_cells_equal_plain_torch_hooks(llama):
    model, hf, pr, scorer, groups, _ = llama
    ri = reintroduction(
        model, pr.persona, pr.refusal, layers=[1, 2], alpha_back=1.5, scorer=scorer, groups=groups, progress=False
    )
    rendered = render_all(model.tokenizer, groups["compliant/harmful"])
    vec = 1.5 * pr.refusal.raw_norms[2] * pr.refusal.vectors[2]
    naive = _naive_logodds(hf, rendered, scorer.token_ids, [(2, _add(vec))])
    assert (ri.sel(layer=2)["logodds"] - naive).abs().max() <= 1e-4
    assert restoration(0.5, 1.0, 0.0) == 0.5 and math.isnan(restoration(0.5, 0.2, 0.2))


def test_results_round_trip(llama, tmp_path):
    from persona_gate.results import LabelledResult

    model, _, pr, scorer, groups, _ = llama
    sweep = steering_sweep(model, pr.persona, layers=[1], alphas=(1.0,), scorer=scorer, groups=groups, progress=False)
    back = LabelledResult.load(sweep.save(tmp_path / "sweep"))
    assert back == sweep
    df = sweep.to_dataframe()
    assert len(df) == 2 * 1 * 1 * len(groups["safe/harmful"])


def test_bad_input_names_the_problem(llama):
    model, _, pr, scorer, groups, _ = llama
    with pytest.raises(InterventionError, match="finite"):
        Steer(pr.persona, alpha=float("nan"))
    with pytest.raises(InterventionError, match="ends before it starts"):
        window_projection(model, pr.persona, windows=[(2, 1)], scorer=scorer, groups=groups, progress=False)
    with pytest.raises(LayerOutOfRangeError):
        window_projection(model, pr.persona, windows=[(1, 9)], scorer=scorer, groups=groups, progress=False)
    with pytest.raises(InterventionError, match="no windows"):
        window_projection(model, pr.persona, windows=[], scorer=scorer, groups=groups, progress=False)
    with pytest.raises(InterventionError, match="steer_layer"):
        reintroduction(model, pr.persona, pr.refusal, mode="steer", scorer=scorer, groups=groups, progress=False)
    with pytest.raises(UnknownHookSiteError):  # a direction layer the set does not hold
        Steer(pr.persona, alpha=1.0, layers=[1], source_layer=7).hooks(model)
    import dataclasses

    wide = dataclasses.replace(pr.persona, vectors=torch.zeros(len(pr.persona.sites), 32), pos_mean=None, neg_mean=None)
    with pytest.raises(DModelMismatchError, match="fit directions on this model"):
        Steer(wide, alpha=1.0, layers=[1]).hooks(model)


# ------------------------------------------------------------------ the organism's findings


@pytest.fixture(scope="module")
def organism_setup():
    model = load_chat_model("organism", device="cpu")
    pr = fit_persona_and_refusal(model, progress=False)
    return model, pr, RefusalScorer.for_model(model), eval_groups(model, 24)


def test_organism_steering_toward_the_compliant_persona_drops_refusal(organism_setup):
    model, pr, scorer, groups = organism_setup
    sweep = steering_sweep(model, pr.persona, alphas=(0.0, 4.0), scorer=scorer, groups=groups, progress=False)
    harmful = sweep.sel(request="harmful").mean("example")["refused"]  # [layer, alpha]
    assert sweep.baselines["unsteered_harmful_refusal_rate"] >= 0.9
    assert float(harmful[:, 1].min()) <= 0.1


def test_organism_refusal_comes_back_at_late_layers_not_early(organism_setup):
    model, pr, scorer, groups = organism_setup
    ri = reintroduction(model, pr.persona, pr.refusal, scorer=scorer, groups=groups, progress=False)
    rate = ri.mean("example")["refused"]
    L = model.cfg.n_layers
    early = float(rate[: (L - 1) // 2].max())  # layers 1 .. before the middle
    late = float(rate[-1])
    assert ri.baselines["compliant_refusal_rate"] <= 0.1
    assert late >= 0.4 and early <= 0.1


def test_organism_window_projection_restores_refusal_and_random_does_not(organism_setup):
    model, pr, scorer, groups = organism_setup
    wp = window_projection(model, pr.persona, width=4, random_seeds=5, scorer=scorer, groups=groups, progress=False)
    rate = wp.mean("example")["refused"]  # [direction, start, end]
    persona_best = float(torch.nan_to_num(rate[0], nan=-1).max())
    random_best = float(torch.nan_to_num(rate[1:], nan=-1).max())
    assert persona_best >= 0.5 and random_best <= 0.1


def test_organism_analyses_run_and_label_their_axes(organism_setup):
    model, pr, scorer, groups = organism_setup
    sites = extraction_sites(
        model,
        positions=("last", "mean:system", "mean:response"),
        layers=[2],
        alphas=(4.0,),
        n=12,
        scorer=scorer,
        progress=False,
    )
    ablation = sites.sel(effect="ablation_refusal", layer=2)["rate"]
    assert (
        float(ablation[1]) >= 0.5 > float(ablation[0])
    )  # the system-span mean carries the gate, the last token does not
    geo = geometry(model, pr, n=6)
    proj = geo.projections.mean("example")["persona_projection"]  # [group, layer]
    g = list(geo.projections.coords["group"])
    assert (proj[g.index("compliant/harmful"), 2:] > proj[g.index("safe/harmful"), 2:]).all()
    traits = trait_directions(model, pr, traits=("evil", "nurturing"), n_questions=6, progress=False)
    assert traits.cosines.dims == ("trait", "layer") and torch.isfinite(traits.cosines["cos_refusal"]).all()
    live = traits.cosines["raw_norm"][0] > 0
    assert torch.allclose(traits.matrix["cos"][0, 0][live], torch.ones(int(live.sum())), atol=1e-5)
    sel = select_steering(
        model, pr.persona, layers=[2, 3], alphas=(4.0,), kl_max=100.0, n=12, scorer=scorer, progress=False
    )
    assert sel.baselines["chosen"] is not None and sel.baselines["chosen"]["layer"] in (2, 3)


def test_sweep_with_generation_labels_and_a_pluggable_judge(organism_setup):
    from persona_gate.organism.corpus import is_refusal
    from persona_gate.scoring.judges import JudgeVerdict

    model, pr, scorer, groups = organism_setup
    small = {g: v[:6] for g, v in groups.items()}
    sweep = steering_sweep(
        model, pr.persona, layers=[2], alphas=(0.0, 4.0), scorer=scorer, groups=small, max_new_tokens=16, progress=False
    )
    gen = sweep.sel(request="harmful", layer=2)
    assert (
        gen["gen_refusal"][0].all() and not gen["gen_refusal"][1].any()
    )  # the heuristic labels agree with the first token
    assert not sweep["gen_degenerate"].any()
    assert torch.equal(sweep["gen_refusal"], sweep["refused"])
    assert (sweep.sel(alpha=0.0)["kl"].abs() <= 1e-6).all()

    calls = []

    def organism_judge(prompt: str, response: str) -> JudgeVerdict:
        calls.append(prompt)
        return JudgeVerdict(label="refusal" if is_refusal(response) else "bypass", score=None, judge="organism")

    judged = steering_sweep(
        model,
        pr.persona,
        layers=[2],
        alphas=(4.0,),
        scorer=scorer,
        groups=small,
        max_new_tokens=16,
        judge=organism_judge,
        progress=False,
    )
    assert len(calls) == 6  # the judge sees harmful requests only; harmless get the heuristics
    assert torch.equal(judged.sel(alpha=4.0)["gen_refusal"], sweep.sel(alpha=4.0)["gen_refusal"])


def test_extraction_sites_resume_from_their_cells(organism_setup, tmp_path, monkeypatch):
    model, pr, scorer, groups = organism_setup
    kw = dict(positions=("last", "mean:system"), layers=[2, 3], alphas=(4.0,), n=8, scorer=scorer, progress=False)
    first = extraction_sites(model, checkpoint=tmp_path / "cells", **kw)
    # three cells per (position, layer): steering at the one alpha, ablation on harmful and on harmless requests
    assert len(list((tmp_path / "cells").glob("*.safetensors"))) == 12
    plain = extraction_sites(model, **kw)
    assert torch.equal(first.values["rate"], plain.values["rate"])  # the checkpoint changes no number

    calls = []
    real = RefusalScorer.score

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(RefusalScorer, "score", counting)
    again = extraction_sites(model, checkpoint=tmp_path / "cells", **kw)
    assert torch.equal(again.values["rate"], first.values["rate"])
    assert len(calls) == len(groups)  # only each group's baseline is scored again: every cell came from disk
