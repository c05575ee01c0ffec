"""LabelledResult: selection and reduction agree with direct tensor maths; tidy frames; exact save/load; errors."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from persona_gate.errors import ArtefactError
from persona_gate.io import save_artefact
from persona_gate.results import LabelledResult

NAN = float("nan")
LAYERS = (0, 3, 7)
ALPHAS = (-2.5, 0.0, 4.0, 8.0)
EXAMPLES = ("harm-0", "harm-1", "harm-2", "harm-3", "harm-4")
DIMS = ("layer", "alpha", "example")


@pytest.fixture
def raw() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    score = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    score[1, 2, :] = NAN  # a (layer, alpha) cell not computed yet, for every example
    score[0, 0, 3] = NAN
    return {
        "score": score,
        "refused": score > 0,  # NaN > 0 is False
        "n_tokens": torch.randint(1, 50, (3, 4, 5), generator=g),
        "kl": torch.rand(3, 4, 5, generator=g),  # float32
    }


@pytest.fixture
def result(raw) -> LabelledResult:
    return LabelledResult(
        "steering_sweep",
        DIMS,
        {"layer": LAYERS, "alpha": list(ALPHAS), "example": EXAMPLES},
        raw,
        baselines={"unsteered_refusal_rate": 0.98, "by_group": {"harmful": 0.98, "harmless": 0.02}},
        metric={"name": "refusal_logodds", "higher_means": "more refusal"},
        config={"layers": LAYERS, "alphas": list(ALPHAS), "seed": 0},
        provenance={"model": "organism", "seed": 0},
    )


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Independent of the module's own comparison: equal dtype, shape, NaN cells and values."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))
    return bool(torch.equal(a, b))


def test_construction_normalises_and_exposes_sizes(result, raw):
    assert result.sizes == {"layer": 3, "alpha": 4, "example": 5}
    assert result.coords["alpha"] == ALPHAS and isinstance(result.coords["alpha"], tuple)
    assert result.config["layers"] == list(LAYERS)  # canonical JSON form, as it will be reloaded
    assert result["score"] is raw["score"]
    with pytest.raises(KeyError, match="score.*refused"):
        result["logodds"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.kind = "other"  # type: ignore[misc]
    alphas = LabelledResult("x", ("alpha",), {"alpha": torch.tensor([0.5, 1.0])}, {"v": torch.zeros(2)})
    assert alphas.coords["alpha"] == (0.5, 1.0) and all(type(a) is float for a in alphas.coords["alpha"])


def test_sel_matches_direct_indexing(result, raw):
    r = result.sel(layer=3, alpha=[8.0, -2.5])
    assert r.dims == ("alpha", "example") and r.coords["alpha"] == (8.0, -2.5)
    for name, t in raw.items():
        assert same(r[name], t[1][[3, 0]])
    r = result.sel(example="harm-2")
    assert r.dims == ("layer", "alpha") and "example" not in r.coords
    for name, t in raw.items():
        assert same(r[name], t[:, :, 2])
    cell = result.sel(layer=7, alpha=0.0, example="harm-4")
    assert cell.dims == () and cell.sizes == {} and same(cell["score"], raw["score"][2, 1, 4])
    kept = result.sel(example=("harm-3",))
    assert kept.sizes["example"] == 1 and same(kept["n_tokens"], raw["n_tokens"][:, :, 3:4])
    assert kept.baselines == result.baselines and kept.metric == result.metric


def test_isel_matches_direct_indexing(result, raw):
    r = result.isel(layer=-1, example=[4, 0])
    assert r.dims == ("alpha", "example") and r.coords["example"] == ("harm-4", "harm-0")
    for name, t in raw.items():
        assert same(r[name], t[2][:, [4, 0]])
    r = result.isel(alpha=slice(1, None, 2))
    assert r.coords["alpha"] == (0.0, 8.0) and same(r["kl"], raw["kl"][:, 1::2])
    assert result.isel(layer=1, alpha=2) == result.sel(layer=3, alpha=4.0)


def test_selection_errors_name_the_fix(result):
    with pytest.raises(KeyError, match=r"available labels: \['harm-0', 'harm-1', 'harm-2', 'harm-3', 'harm-4'\]"):
        result.sel(example="harm-9")
    with pytest.raises(KeyError, match=r"\[5\].*available labels: \[0, 3, 7\]"):
        result.sel(layer=[3, 5])
    with pytest.raises(KeyError, match="has dims"):
        result.sel(position=-1)
    with pytest.raises(IndexError, match="size 3"):
        result.isel(layer=3)
    with pytest.raises(TypeError, match="sel"):
        result.isel(example="harm-0")


def test_mean_matches_naive_nanmean(result, raw):
    m = result.mean("alpha")
    assert m.dims == ("layer", "example") and m.coords == {"layer": LAYERS, "example": EXAMPLES}
    naive = torch.empty(3, 5, dtype=torch.float64)
    for i in range(3):
        for k in range(5):
            seen = [float(raw["score"][i, j, k]) for j in range(4) if not math.isnan(raw["score"][i, j, k])]
            naive[i, k] = math.fsum(seen) / len(seen) if seen else NAN
    assert torch.allclose(m["score"], naive, rtol=1e-12, atol=0, equal_nan=True)
    assert same(m["score"], torch.nanmean(raw["score"], dim=1))
    assert not m["score"].isnan().any()  # every (layer, example) has some alpha computed
    # a bool mean is a rate, in float64
    assert m["refused"].dtype == torch.float64
    assert torch.allclose(m["refused"], raw["refused"].sum(1).double() / 4)
    assert torch.allclose(m["n_tokens"], raw["n_tokens"].double().mean(1))
    # the all-NaN (layer 3, alpha 4) slice stays NaN: not computed is not zero
    assert result.mean("example").sel(layer=3, alpha=4.0)["score"].isnan()


def test_reduce_and_its_shape_check(result, raw):
    r = result.reduce("layer", lambda t, ax: t.sum(ax))
    assert r.dims == ("alpha", "example") and same(r["n_tokens"], raw["n_tokens"].sum(0))
    with pytest.raises(ValueError, match="must drop axis 0"):
        result.reduce("layer", lambda t, ax: t.sum(ax, keepdim=True))


def test_to_dataframe_is_tidy_cell_by_cell(result, raw):
    df = result.to_dataframe()
    assert len(df) == 3 * 4 * 5
    assert list(df.columns) == [*DIMS, "score", "refused", "n_tokens", "kl"]
    assert df["layer"].dtype.kind == "i" and df["alpha"].dtype.kind == "f" and df["refused"].dtype.kind == "b"
    for row in df.itertuples(index=False):
        ix = (LAYERS.index(row.layer), ALPHAS.index(row.alpha), EXAMPLES.index(row.example))
        want = raw["score"][ix].item()
        assert (math.isnan(row.score) and math.isnan(want)) or row.score == want
        assert row.refused == raw["refused"][ix].item() and row.n_tokens == raw["n_tokens"][ix].item()
        assert row.kl == pytest.approx(raw["kl"][ix].item(), abs=0)


def test_to_dict_is_strict_json(result, raw):
    d = json.loads(json.dumps(result.sel(layer=0).to_dict(), allow_nan=False))
    assert d["dims"] == ["alpha", "example"] and d["coords"]["alpha"] == list(ALPHAS)
    assert d["values"]["score"][0][3] is None  # NaN = not computed
    assert d["values"]["score"][1][0] == raw["score"][0, 1, 0].item()
    assert d["metric"]["higher_means"] == "more refusal"
    with pytest.raises(ValueError, match="to_dataframe"):
        result.to_dict(max_cells=10)


def test_save_load_round_trips_every_field(result, tmp_path):
    path = result.save(tmp_path / "sweep")
    back = LabelledResult.load(path)
    assert back == result
    assert back.kind == "steering_sweep" and back.dims == DIMS
    assert back.coords == result.coords
    for d in DIMS:
        assert [type(x) for x in back.coords[d]] == [type(x) for x in result.coords[d]]
    for name, t in result.values.items():
        assert same(back[name], t), name
    assert back["refused"].dtype == torch.bool and back["score"][1, 2].isnan().all()
    assert (back.baselines, back.metric, back.config, back.provenance) == (
        result.baselines,
        result.metric,
        result.config,
        result.provenance,
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "labelled_result" and manifest["result_kind"] == "steering_sweep"
    assert manifest["coord_types"] == {"layer": "int", "alpha": "float", "example": "str"}
    # saving again over the folder replaces it
    result.sel(layer=0).save(path)
    assert LabelledResult.load(path).dims == ("alpha", "example")


def test_mixed_labels_keep_their_types(tmp_path):
    r = LabelledResult("patching", ("position",), {"position": (-1, 1.0, "last", False)}, {"v": torch.arange(4.0)})
    back = LabelledResult.load(r.save(tmp_path / "p"))
    assert [type(x) for x in back.coords["position"]] == [int, float, str, bool]
    assert back == r
    ints = LabelledResult("patching", ("position",), {"position": (-1, 2, 3, 4)}, {"v": torch.arange(4.0)})
    floats = LabelledResult("patching", ("position",), {"position": (-1.0, 2, 3, 4)}, {"v": torch.arange(4.0)})
    assert ints != floats  # -1 and -1.0 are different labels once saved


def test_load_refuses_other_kinds_and_broken_folders(result, tmp_path):
    save_artefact(tmp_path / "dirs", "direction_set", {"vectors": torch.zeros(2, 3)}, {"name": "refusal"})
    with pytest.raises(ArtefactError, match="direction_set"):
        LabelledResult.load(tmp_path / "dirs")
    path = result.save(tmp_path / "sweep")
    tensors = path / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-40])
    with pytest.raises(ArtefactError, match="truncated"):
        LabelledResult.load(path)
    path = result.save(tmp_path / "sweep")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.pop("checksum")  # a folder written before checksums: the structural checks still apply
    manifest["coords"]["layer"] = [0.0, 3.0, 7.0]  # floats where the tag says int
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match="recorded types"):
        LabelledResult.load(path)
    manifest["coords"]["layer"] = [0, 3]  # no longer matches the tensors' shape
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match="shape"):
        LabelledResult.load(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"values": {"score": torch.zeros(3, 5, 4)}}, r"shape \(3, 5, 4\).*'alpha': 4"),
        ({"coords": {"layer": LAYERS, "alpha": ALPHAS, "example": EXAMPLES, "head": (0,)}}, r"unknown dims \['head'\]"),
        ({"coords": {"layer": LAYERS, "alpha": ALPHAS}}, r"\['example'\] have no coords"),
        ({"dims": ("layer", "alpha", "layer")}, r"repeat \['layer'\]"),
        ({"dims": "layer"}, "tuple of non-empty names"),
        ({"coords": {"layer": (0, 3, 3), "alpha": ALPHAS, "example": EXAMPLES}}, r"repeats the labels \[3\]"),
        ({"coords": {"layer": (0, 3, 3.0), "alpha": ALPHAS, "example": EXAMPLES}}, r"repeats the labels \[3\]"),
        ({"coords": {"layer": LAYERS, "alpha": (0.0, 1.0, NAN, 2.0), "example": EXAMPLES}}, "NaN"),
        ({"coords": {"layer": LAYERS, "alpha": ALPHAS, "example": (None,) * 5}}, "int, float, str or bool"),
        ({"baselines": {"rate": torch.tensor(0.98)}}, r"baselines\['rate'\].*not JSON-able"),
        ({"config": {"layers": [0, object()]}}, r"config\['layers'\]\[1\].*not JSON-able"),
        ({"baselines": {"by_layer": {3: 0.5}}}, r"baselines\['by_layer'\] has non-string keys \[3\]"),
        ({"values": {"layer": torch.zeros(3, 4, 5)}}, "not a dim name"),
        ({"values": {"score": torch.zeros(3, 4, 5, dtype=torch.float16)}}, r"float16.*\.float\(\)"),
    ],
)
def test_construction_errors_name_the_fix(result, change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(result, **change)


def test_non_tensor_value_is_refused(result):
    # Under pytest the runtime type checker (a TypeError) may answer before the module's ValueError.
    with pytest.raises((ValueError, TypeError), match="tensor|Tensor"):
        dataclasses.replace(result, values={"score": [[0.0]]})


def test_with_values_fills_missing_cells_in_a_copy(result, raw):
    filled = torch.where(raw["score"].isnan(), torch.zeros((), dtype=torch.float64), raw["score"])
    r = result.with_values(score=filled, done=~raw["score"].isnan())
    assert not r["score"].isnan().any() and r["done"].sum() == 60 - 6
    assert result["score"].isnan().sum() == 6  # the original is untouched
    with pytest.raises(ValueError, match="shape"):
        result.with_values(score=torch.zeros(3, 4))


# --- properties over random results -------------------------------------------------------------

LABEL = st.one_of(
    st.integers(-5, 50), st.floats(allow_nan=False, allow_infinity=True, width=64), st.text(min_size=1, max_size=3)
)


@st.composite
def result_args(draw, min_dims: int = 1) -> tuple:
    ndims = draw(st.integers(min_dims, 3))
    dims = tuple(f"d{i}" for i in range(ndims))
    coords = {d: tuple(draw(st.lists(LABEL, min_size=1, max_size=4, unique=True))) for d in dims}
    shape = tuple(len(coords[d]) for d in dims)
    n = math.prod(shape)
    cells = draw(st.lists(st.one_of(st.just(NAN), st.floats(-1e6, 1e6)), min_size=n, max_size=n))
    v = torch.tensor(cells, dtype=torch.float64).reshape(shape)
    values = {"v": v, "b": torch.arange(n).reshape(shape) % 2 == 0}
    return "random", dims, coords, values, {}, {}, {"n": n}  # built in the test: beartype draws on `random`


@settings(max_examples=60, deadline=None)
@given(result_args(min_dims=2), st.data())
def test_sel_and_isel_commute(args, data):
    r = LabelledResult(*args)
    a, b = data.draw(st.permutations(r.dims))[:2]
    label = data.draw(st.sampled_from(r.coords[a]))
    j = data.draw(st.integers(0, r.sizes[b] - 1))
    assert r.sel(**{a: label}).isel(**{b: j}) == r.isel(**{b: j}).sel(**{a: label})
    assert r.sel(**{a: label}) == r.isel(**{a: r.coords[a].index(label)})


@settings(max_examples=60, deadline=None)
@given(result_args(), st.data())
def test_mean_over_a_size_one_dim_is_identity(args, data):
    r = LabelledResult(*args)
    d = data.draw(st.sampled_from(r.dims))
    one = r.isel(**{d: [0]})
    m = one.mean(d)
    assert m.dims == tuple(x for x in r.dims if x != d)
    assert same(m["v"], one["v"].squeeze(r.dims.index(d)))
    assert same(m["b"], one["b"].squeeze(r.dims.index(d)).double())


@settings(max_examples=30, deadline=None)
@given(result_args())
def test_save_load_and_frame_properties(args):
    r = LabelledResult(*args)
    with tempfile.TemporaryDirectory() as tmp:
        back = LabelledResult.load(r.save(Path(tmp) / "r"))
    assert back == r and all(type(x) is type(y) for d in r.dims for x, y in zip(back.coords[d], r.coords[d]))
    assert len(r.to_dataframe()) == math.prod(r.sizes.values())


def test_a_hand_edited_folder_is_refused_by_its_checksum(tmp_path):
    from persona_gate import DirectionSet, HookSite

    ds = DirectionSet.from_means(
        "persona", [HookSite(0), HookSite(1)], torch.randn(2, 4), torch.randn(2, 4), "p", "n", {}, "last"
    )
    path = ds.save(tmp_path / "dirs")
    assert torch.equal(DirectionSet.load(path).vectors, ds.vectors)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["sites"] = manifest["sites"][::-1]  # reordered sites: every vector now sits at the wrong layer
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match="changed after it was saved.*save it again"):
        DirectionSet.load(path)
    path = ds.save(tmp_path / "dirs")
    from safetensors.torch import load_file, save_file

    t = load_file(str(path / "tensors.safetensors"))
    save_file({k: v * 2 for k, v in t.items()}, str(path / "tensors.safetensors"))  # rescaled vectors
    with pytest.raises(ArtefactError, match="changed after it was saved"):
        DirectionSet.load(path)
