"""Directions: streaming fit == naive computation; DirectionSet maths, save/load and errors."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import hf_reference

from persona_gate import (
    DirectionFitter,
    DirectionSet,
    HookSite,
    fit_group_means,
    fit_persona_and_refusal,
    render_all,
    sites_for,
    standard_prompts,
)
from persona_gate.errors import (
    ArtefactError,
    DModelMismatchError,
    EmptyGroupError,
    NonFiniteError,
    SchemaVersionError,
    UnknownHookSiteError,
)
from persona_gate.prompts.positions import parse_position, weights


@pytest.fixture(scope="module")
def grid():
    return standard_prompts(n_per_group=6, seed=1)


def test_streaming_means_and_directions_equal_naive_hf(tiny, tiny_model_dirs, arch, grid):
    rendered = render_all(tiny.tokenizer, grid)
    ref = hf_reference(tiny_model_dirs[arch], rendered)
    n_layers = tiny.cfg.n_layers
    pr = fit_persona_and_refusal(tiny, grid, batch_size=7, progress=False)

    def naive_mean(groups, spec):
        vecs = [
            sum(v * ref[i][:n_layers, t] for t, v in weights(parse_position(spec), rp).items())
            for i, rp in enumerate(rendered)
            if rp.group in groups
        ]
        return torch.stack(vecs).double().mean(0)

    harm, harmless = naive_mean({"safe/harmful"}, "last"), naive_mean({"safe/harmless"}, "last")
    comp = naive_mean({"compliant/harmful", "compliant/harmless"}, "mean:system")
    safe = naive_mean({"safe/harmful", "safe/harmless"}, "mean:system")
    for ds, pos, neg in ((pr.refusal, harm, harmless), (pr.persona, comp, safe)):
        diff = pos - neg
        assert (ds.pos_mean.double() - pos).abs().max() <= 1e-5
        assert (ds.neg_mean.double() - neg).abs().max() <= 1e-5
        assert (ds.raw_norms.double() - diff.norm(dim=-1)).abs().max() <= 1e-5
        ok = diff.norm(dim=-1) > 1e-6
        unit = diff[ok] / diff[ok].norm(dim=-1, keepdim=True)
        assert (ds.vectors[ok].double() - unit).abs().max() <= 1e-5
    assert pr.refusal.counts == {"safe/harmful": 6, "safe/harmless": 6}
    assert pr.persona.counts == {"(compliant/harmful+compliant/harmless)": 12, "(safe/harmful+safe/harmless)": 12}
    # resid_pre.0 at the last token is one template token's embedding for every prompt: no direction
    # (GPT-2 adds an absolute position embedding there, which differs with the prompt's length).
    if arch != "gpt2":
        assert pr.refusal.raw_norms[0] == 0 and torch.all(pr.refusal.vectors[0] == 0)


def test_fitter_is_order_and_batch_invariant(tiny, grid):
    sites = sites_for(tiny)
    a = fit_group_means(tiny, grid, sites, ["last"], batch_size=3, progress=False)
    b = fit_group_means(tiny, list(reversed(grid)), sites, ["last"], batch_size=16, progress=False)
    for key in a.means:
        assert (a.means[key] - b.means[key]).abs().max() <= 1e-6


def _toy(name="t", sites=(HookSite(0), HookSite(1)), d=8, seed=0) -> DirectionSet:
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.randn(len(sites), d, generator=g), torch.randn(len(sites), d, generator=g)
    return DirectionSet.from_means(name, list(sites), pos, neg, "p", "n", {"p": 3, "n": 4}, "last", {"seed": seed})


def test_save_load_round_trips_every_field(tmp_path):
    ds = _toy()
    back = DirectionSet.load(ds.save(tmp_path / "d"))
    for f in ("name", "sites", "positive", "negative", "counts", "position", "provenance"):
        assert getattr(back, f) == getattr(ds, f), f
    for f in ("vectors", "raw_norms", "pos_mean", "neg_mean"):
        assert torch.equal(getattr(back, f), getattr(ds, f)), f


def test_schema_version_and_d_model_checks(tmp_path, tiny):
    path = _toy().save(tmp_path / "d")
    with pytest.raises(DModelMismatchError, match="another model"):
        DirectionSet.load(path, model=tiny)
    with pytest.raises(DModelMismatchError):
        DirectionSet.load(path, d_model=9)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SchemaVersionError, match="upgrade"):
        DirectionSet.load(path)


def test_corrupt_and_wrong_folders(tmp_path):
    from persona_gate import ActivationStore

    path = _toy().save(tmp_path / "d")
    with pytest.raises(ArtefactError, match="activation_store"):
        ActivationStore.load(path)
    data = (path / "tensors.safetensors").read_bytes()
    (path / "tensors.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtefactError, match="corrupt or truncated"):
        DirectionSet.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtefactError, match="corrupt"):
        DirectionSet.load(path)
    with pytest.raises(ArtefactError, match="no such directory"):
        DirectionSet.load(tmp_path / "missing")


def test_save_replaces_atomically(tmp_path):
    path = _toy(seed=0).save(tmp_path / "d")
    _toy(seed=1).save(path)
    assert DirectionSet.load(path).provenance == {"seed": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folders left


def test_empty_single_and_unknown_groups(tiny, grid):
    means = fit_group_means(tiny, grid[:7], sites_for(tiny), ["last"], progress=False)
    with pytest.raises(EmptyGroupError, match="at least 2"):
        fitter = DirectionFitter(sites_for(tiny), ["last"], tiny.cfg.d_model)
        fitter.update(["x", "y"], torch.zeros(1, 2, tiny.cfg.n_layers, tiny.cfg.d_model))
        fitter.means().direction("d", "x", "y")
    with pytest.raises(EmptyGroupError, match="groups are"):
        means.mean("nobody", "last")
    with pytest.raises(EmptyGroupError, match="no activations"):
        DirectionFitter(sites_for(tiny), ["last"], tiny.cfg.d_model).means()


def test_non_finite_inputs_raise():
    with pytest.raises(NonFiniteError):
        DirectionFitter([HookSite(0)], ["last"], 4).update(["a"], torch.full((1, 1, 1, 4), float("nan")))
    with pytest.raises(NonFiniteError):
        DirectionSet.from_means(
            "x", [HookSite(0)], torch.full((1, 4), float("inf")), torch.zeros(1, 4), "p", "n", {}, "last"
        )


def test_cosine_projection_and_random_control():
    a, b = _toy(seed=0), _toy(seed=1)
    assert torch.allclose(a.cosine(a), torch.ones(2))
    m = a.cosine_matrix(b)
    assert torch.allclose(m.diagonal(), a.cosine(b))
    x = torch.randn(5, 2, 8)
    assert torch.allclose(a.project(x), (x * a.vectors).sum(-1), atol=1e-6)
    r1, r2 = a.random_like(seed=3), a.random_like(seed=3)
    assert torch.equal(r1.vectors, r2.vectors) and not torch.equal(r1.vectors, a.random_like(4).vectors)
    assert torch.equal(r1.raw_norms, a.raw_norms)
    assert torch.allclose(r1.vectors.norm(dim=-1), torch.ones(2))
    with pytest.raises(DModelMismatchError):
        a.cosine(_toy(d=4))
    with pytest.raises(UnknownHookSiteError):
        a.at("resid_post.0")
    assert torch.equal(a.at(1), a.at("resid_pre.1"))
    assert torch.allclose(a.raw(0), a.pos_mean[0] - a.neg_mean[0], atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(2, 16),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 10_000),
)
def test_direction_properties(d, scale, seed):
    """Unit norm; sign follows the convention; swapping groups flips it; scale-invariant."""
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.randn(1, d, generator=g, dtype=torch.float64), torch.randn(1, d, generator=g, dtype=torch.float64)
    ds = DirectionSet.from_means("x", [HookSite(0)], pos, neg, "p", "n", {}, "last")
    flipped = DirectionSet.from_means("x", [HookSite(0)], neg, pos, "n", "p", {}, "last")
    scaled = DirectionSet.from_means("x", [HookSite(0)], pos * scale, neg * scale, "p", "n", {}, "last")
    assert abs(float(ds.vectors.norm()) - 1) < 1e-5
    assert float(ds.project(pos.float()[None]) - ds.project(neg.float()[None])) > 0
    assert torch.allclose(flipped.vectors, -ds.vectors)
    assert torch.allclose(scaled.vectors, ds.vectors, atol=1e-5)


def test_repeated_positions_do_not_double_the_means(tiny, grid):
    once = fit_group_means(tiny, grid, sites_for(tiny), ["last"], progress=False)
    twice = fit_group_means(tiny, grid, sites_for(tiny), ["last", "mean:system", "last"], progress=False)
    assert twice.positions == ("last", "mean:system")
    for g in once.groups:
        assert torch.allclose(once.means[("last", g)], twice.means[("last", g)])


def test_a_failed_replace_keeps_the_previous_artefact(tmp_path, monkeypatch):
    import os

    from persona_gate.io import atomic as pg_io

    path = _toy(seed=0).save(tmp_path / "d")
    real = os.replace
    calls = []

    def flaky(a, b):
        calls.append((a, b))
        if len(calls) == 2:  # the new folder's move into place fails
            raise OSError("disk full")
        return real(a, b)

    monkeypatch.setattr(pg_io.os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        _toy(seed=1).save(path)
    monkeypatch.setattr(pg_io.os, "replace", real)
    assert DirectionSet.load(path).provenance == {"seed": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_repr_is_one_short_line(tiny, grid):
    pr = fit_persona_and_refusal(tiny, grid, progress=False)
    text = repr(pr.persona)
    assert "\n" not in text and len(text) < 200 and "mean:system" in text and "d_model 64" in text
