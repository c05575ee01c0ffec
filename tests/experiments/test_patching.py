"""Activation patching: exact against TransformerLens's utility, exact no-ops and end points."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from persona_gate import render_all, standard_prompts
from persona_gate.experiments.patching import activation_patching, agreement, align, attribution_patching, gate_layers

TOKENS = [5, 17, 40]  # any fixed token set: the metric is their log-odds at the last position


def _equal_length_pair(model):
    """A source and a target of equal length: the target's system tokens replaced by other ids."""
    grid = standard_prompts(n_per_group=1, seed=0)
    src = render_all(model.tokenizer, [grid[0]])[0]
    ids = list(src.input_ids)
    lo, hi = src.system
    for i in range(lo, hi, 2):
        ids[i] = (ids[i] * 7 + 3) % 300 + 20
    return src, dataclasses.replace(src, input_ids=tuple(ids))


def _logodds(logits):
    lp = torch.log_softmax(logits[:, -1].double(), -1)
    p = lp[:, TOKENS].exp().sum(-1)
    return torch.log(p) - torch.log1p(-p)


def test_equal_length_patching_equals_transformer_lens(tiny_models, arch):  # every architecture of the matrix
    from transformer_lens.patching import get_act_patch_resid_pre

    model = tiny_models[arch]
    src, tgt = _equal_length_pair(model)
    ours = activation_patching(model, [src], [tgt], TOKENS, positions="tokens", min_gap=0.0, progress=False)
    _, cache = model.run_with_cache(torch.tensor([src.input_ids]))
    theirs = get_act_patch_resid_pre(model, torch.tensor([tgt.input_ids]), cache, lambda logits: _logodds(logits)[0])
    assert theirs.shape == (model.cfg.n_layers, len(src))
    assert (ours["logodds"][:, :-1, 0].double() - theirs.double()).abs().max() <= 1e-4


def test_end_points_and_no_op(tiny_models):
    model = tiny_models["llama"]
    src, tgt = _equal_length_pair(model)
    for kind in ("resid_pre", "resid_post"):
        r = activation_patching(model, [src], [tgt], TOKENS, kind=kind, positions="tokens", min_gap=0.0, progress=False)
        rest = r["restoration"][:, :, 0]
        if kind == "resid_pre":
            assert float(rest[0, -1]) == pytest.approx(1.0, abs=1e-5)  # embedding layer, all positions
        else:
            last_layer, last_pos = model.cfg.n_layers - 1, len(src) - 1
            assert float(rest[last_layer, last_pos]) == pytest.approx(1.0, abs=1e-5)
    for kind in ("resid_pre", "resid_mid", "attn_out"):
        same = activation_patching(
            model, [src], [src], TOKENS, kind=kind, positions="tokens", min_gap=0.0, progress=False
        )
        assert torch.equal(same["effect"], torch.zeros_like(same["effect"]))  # exact zeros everywhere
        assert torch.isnan(same["restoration"]).all()  # 0/0: no gap to restore


def test_noising_mirrors_denoising_at_the_ends(tiny_models):
    model = tiny_models["qwen2"]
    src, tgt = _equal_length_pair(model)
    noise = activation_patching(
        model, [src], [tgt], TOKENS, positions="tokens", mode="noising", min_gap=0.0, progress=False
    )
    # Noising the source with every target activation at the embedding gives the target (0).
    assert float(noise["logodds"][0, -1, 0]) == pytest.approx(noise.baselines["target_logodds"][0], abs=1e-4)
    gap = noise.baselines["source_logodds"][0] - noise.baselines["target_logodds"][0]
    assert float(noise["restoration"][0, -1, 0]) == pytest.approx(0.0, abs=1e-4 / abs(gap))
    assert noise.baselines["source_logodds"] != noise.baselines["target_logodds"]


def test_role_alignment_across_different_persona_lengths(tiny_models):
    model = tiny_models["qwen2"]
    grid = standard_prompts(n_per_group=3, seed=0)
    safe = [p for p in grid if p.group == "safe/harmful"]
    comp = [p for p in grid if p.group == "compliant/harmful"]
    rs, rt = render_all(model.tokenizer, safe), render_all(model.tokenizer, comp)
    slots = align(model.tokenizer, rs[0], rt[0], "roles")
    labels = [s.label for s in slots]
    assert "[system]" in labels and "[user]" in labels and labels[-1] == "[all]"
    post = [s for s in slots if s.label.endswith(")") and "(-" in s.label]
    assert [model.tokenizer.decode([rt[0].input_ids[s.target[0]]]) for s in post] == [
        "<|im_end|>",
        "\n",
        "<|im_start|>",
        *[model.tokenizer.decode([t]) for t in rt[0].input_ids[-(len(post) - 3) :]],
    ]
    r = activation_patching(model, safe, comp, TOKENS, layers=[0, 2], min_gap=0.0, progress=False)
    assert r.dims == ("layer", "position", "example") and r.sizes["example"] == 3
    assert torch.isfinite(r["restoration"]).all()
    rows = gate_layers(r, threshold=0.5)
    assert [row["layer"] for row in rows] == [0, 2] and all(
        row["low"] <= row["restoration"] <= row["high"] for row in rows
    )


def test_direction_patching_with_the_full_difference_equals_plain_patching(tiny_models):
    """Patching only along v where v is the exact source-target difference is the plain patch."""
    from persona_gate import DirectionSet, HookSite

    model = tiny_models["llama"]
    src, tgt = _equal_length_pair(model)
    plain = activation_patching(
        model, [src], [tgt], TOKENS, positions="tokens", layers=[1], min_gap=0.0, progress=False
    )
    _, cs = model.run_with_cache(torch.tensor([src.input_ids]))
    _, ct = model.run_with_cache(torch.tensor([tgt.input_ids]))
    pos = src.system[0]
    diffs = torch.stack(
        [
            cs[f"blocks.{i}.hook_resid_pre"][0, pos] - ct[f"blocks.{i}.hook_resid_pre"][0, pos]
            for i in range(model.cfg.n_layers)
        ]
    )
    d = DirectionSet.from_means(
        "diff", [HookSite(i) for i in range(model.cfg.n_layers)], diffs, torch.zeros_like(diffs), "s", "t", {}, "x"
    )
    along = activation_patching(
        model, [src], [tgt], TOKENS, positions="tokens", layers=[1], direction=d, min_gap=0.0, progress=False
    )
    k = [i for i, lab in enumerate(plain.coords["position"]) if lab.startswith(f"{pos} ")][0]
    assert float((along["logodds"][0, k] - plain["logodds"][0, k]).abs()) <= 1e-4


def test_attribution_agrees_with_exact_patching(tiny_models):
    model = tiny_models["qwen2"]
    src, tgt = _equal_length_pair(model)
    exact = activation_patching(model, [src], [tgt], TOKENS, positions="tokens", min_gap=0.0, progress=False)
    approx = attribution_patching(model, [src], [tgt], TOKENS, positions="tokens", progress=False)
    assert approx.dims == exact.dims and approx.coords == exact.coords
    report = agreement(exact, approx)
    assert report["cells"] == exact["restoration"].numel() and report["pearson"] > 0.5


def test_mismatched_inputs_raise(tiny_models):
    from persona_gate.errors import PositionError

    model = tiny_models["qwen2"]
    grid = standard_prompts(n_per_group=2, seed=0)
    with pytest.raises(PositionError, match="as many"):
        activation_patching(model, grid[:2], grid[:1], TOKENS, min_gap=0.0, progress=False)
    harmful = [p for p in grid if p.group == "safe/harmful"]
    harmless = [p for p in grid if p.group == "compliant/harmless"]
    with pytest.raises(PositionError, match="different requests"):
        activation_patching(model, harmful[:1], harmless[:1], TOKENS, positions="roles", min_gap=0.0, progress=False)


def test_pairs_without_a_gap_get_no_restoration(tiny_models):
    model = tiny_models["llama"]
    src, tgt = _equal_length_pair(model)
    r = activation_patching(model, [src], [tgt], TOKENS, positions="tokens", layers=[0], min_gap=1e9, progress=False)
    assert torch.isnan(r["restoration"]).all() and torch.isfinite(r["effect"]).all()
