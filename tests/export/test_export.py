"""Exports: weights with an intervention baked in, llama.cpp control vectors, plain directions.

The exported folder is loaded with transformers alone and compared with the hooked bridge under
the same intervention (float32, every position); the control vector and the directions file are
read back with their own readers (gguf, safetensors) and compared value by value.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from persona_gate.core.directions import DirectionSet
from persona_gate.core.interventions import Ablate, Steer, apply
from persona_gate.errors import DModelMismatchError, InterventionError, OutputExistsError, UnsupportedModelError
from persona_gate.export import EXPORT_FILE, export_control_vector, export_model, hooked_equivalent
from persona_gate.models.loading import provenance
from persona_gate.sites import HookSite

EXACT = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gpt2", "gpt_neox", "falcon")  # qwen2, gpt2, falcon: tied
TOL = 1e-4


def random_set(model, name="refusal", seed=0, same=False) -> DirectionSet:
    """A seeded unit direction per layer (the export is exact for any direction)."""
    g = torch.Generator().manual_seed(seed)
    n, d = int(model.cfg.n_layers), int(model.cfg.d_model)
    v = torch.randn(1 if same else n, d, generator=g).expand(n, d).clone()
    return DirectionSet(
        name=name,
        sites=tuple(HookSite(i) for i in range(n)),
        vectors=v / v.norm(dim=-1, keepdim=True),
        raw_norms=torch.linspace(1.0, 3.0, n),
        positive="a",
        negative="b",
        counts={"a": 1, "b": 1},
        position="last",
        provenance=provenance(model),
    )


def _ids(model) -> torch.Tensor:
    return torch.randint(3, int(model.cfg.d_vocab) - 1, (2, 9), generator=torch.Generator().manual_seed(1))


def _hooked(model, spec, ids, through_last_block=None) -> torch.Tensor:
    with torch.no_grad(), apply(model, *hooked_equivalent(model, spec, through_last_block=through_last_block)):
        return model(ids).float()


def _plain(folder, ids) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(ids).logits.float()


@pytest.mark.parametrize("arch", EXACT)
def test_exported_ablation_equals_the_hooked_model(tiny_models, arch, tmp_path):
    model = tiny_models[arch]
    ds, ids = random_set(model), _ids(model)
    n = int(model.cfg.n_layers)
    with torch.no_grad():
        clean = model(ids).float()
    # every layer (through the last block), a window 0..b short of the last (the window form), and
    # that window through its last block b
    for layers, through in ((range(n), None), (range(n - 1), True), (range(n - 1), None)):
        spec = Ablate(ds, layers=layers, source_layer=1)
        out = export_model(model, spec, tmp_path / f"abl{len(layers)}-{through}", through_last_block=through)
        want, got = _hooked(model, spec, ids, through), _plain(out, ids)
        assert (want - clean).abs().max() > 1e-3  # the intervention does something ...
        assert (got - want).abs().max() <= TOL, (
            arch,
            list(layers),
            through,
            float((got - want).abs().max()),
        )  # ... and the export is it
    with torch.no_grad():
        assert torch.equal(model(ids).float(), clean)  # the loaded model is untouched
    record = json.loads((out / EXPORT_FILE).read_text())
    assert {k: record["intervention"][k] for k in ("kind", "direction", "layers", "source_layer")} == {
        "kind": "ablate",
        "direction": "refusal",
        "layers": [0, n - 2],
        "source_layer": 1,
    }
    # a window short of the last layer keeps the window form: block n-2 reads a clean stream, writes as it did
    assert record["intervention"]["through_last_block"] is False and record["intervention"]["edited_blocks"] == [
        0,
        n - 3,
    ]
    assert record["intervention"]["form"].startswith("window")
    assert record["direction_provenance"]["model"]["name"] == ds.provenance["model"]["name"]


def _every_site_ablated(model, v, ids) -> torch.Tensor:
    """Directional ablation written here, independently of persona_gate's interventions: ``v`` projected
    out of the stream at every residual site the bridge has (resid_pre, resid_mid where attention and
    MLP run one after the other, resid_post) of every layer, the last layer's resid_post included."""
    u = v.float() / v.float().norm()
    sites = [
        f"blocks.{layer}.hook_{kind}"
        for layer in range(int(model.cfg.n_layers))
        for kind in ("resid_pre", "resid_mid", "resid_post")
    ]
    hooks = [(name, lambda x, hook: x - (x @ u)[..., None] * u) for name in sites if name in model.hook_dict]
    assert f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post" in [name for name, _ in hooks]
    with torch.no_grad():
        return model.run_with_hooks(ids, fwd_hooks=hooks).float()


def _last_block_output(folder, ids) -> torch.Tensor:
    """The residual stream leaving the last decoder block of the plain Hugging Face model in ``folder``
    (before the final norm), from a forward hook on that block."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    n = int(hf.config.get_text_config().num_hidden_layers)
    (blocks,) = [m for m in hf.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    seen = {}
    blocks[-1].register_forward_hook(lambda m, i, o: seen.update(h=o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        hf(ids)
    return seen["h"].float()


EVERY_SITE_TOL = 1e-5  # float32 rounding (measured: at most 4e-7 on these models)
PROJ_TOL = 1e-5  # |last block's output . v| over its largest norm (measured: below 1e-7; 4-11% in the window form)


@pytest.mark.parametrize("arch", EXACT)
def test_every_layer_ablation_edits_every_write_through_the_last_block(tiny_models, arch, tmp_path):
    model = tiny_models[arch]
    n, ds, ids = int(model.cfg.n_layers), random_set(model), _ids(model)
    v = ds.at(1).double()
    want = _every_site_ablated(model, v, ids)
    out = export_model(model, Ablate(ds, layers=range(n), source_layer=1), tmp_path / "all")  # the default form
    got = _plain(out, ids)
    assert (got - want).abs().max() <= EVERY_SITE_TOL, (arch, float((got - want).abs().max()))
    with torch.no_grad(), apply(model, *hooked_equivalent(model, Ablate(ds, layers=range(n), source_layer=1))):
        assert (model(ids).float() - want).abs().max() <= EVERY_SITE_TOL  # the hooks the manifest names are these
    h = _last_block_output(out, ids)
    assert (h.double() @ v / v.norm()).abs().max() <= PROJ_TOL * h.norm(dim=-1).max(), (
        arch
    )  # the last block writes no v
    record = json.loads((out / EXPORT_FILE).read_text())["intervention"]
    assert record["through_last_block"] is True and record["edited_blocks"] == [0, n - 1]
    assert record["ablated_through"] == f"resid_post.{n - 1}" and "every write of the model" in record["form"]
    equals = json.loads((out / EXPORT_FILE).read_text())["equals"]
    assert {"spec": "Ablate", "site": "resid_post", "layers": [n - 1], "source_layer": 1} in equals

    # the window form over the same layers leaves the last block's writes alone: not the field's ablation
    window = export_model(model, Ablate(ds, layers=range(n), source_layer=1), tmp_path / "w", through_last_block=False)
    h = _last_block_output(window, ids)
    assert (h.double() @ v / v.norm()).abs().max() > 1e-2 * h.norm(dim=-1).max(), arch
    assert (_plain(window, ids) - want).abs().max() > 1e-3
    assert json.loads((window / EXPORT_FILE).read_text())["intervention"]["edited_blocks"] == [0, n - 2]


@pytest.mark.parametrize(
    "arch, layer", [("llama", 1), ("llama", 0), ("qwen2", 0), ("gpt2", 1), ("gpt_neox", 1), ("gpt2", 0)]
)
def test_exported_steering_equals_the_hooked_model(tiny_models, arch, layer, tmp_path):
    model = tiny_models[arch]
    ds, ids = random_set(model, "persona", seed=3), _ids(model)
    spec = Steer(ds, alpha=2.5, layers=[layer], scope="both")
    out = export_model(model, spec, tmp_path / "steer")
    want, got = _hooked(model, spec, ids), _plain(out, ids)
    assert (got - want).abs().max() <= TOL, (arch, layer, float((got - want).abs().max()))
    with torch.no_grad():
        assert (want - model(ids).float()).abs().max() > 1e-3


def test_what_has_no_exact_weight_equivalent_is_a_named_error_before_writing(tiny_models, tmp_path):
    llama = tiny_models["llama"]
    ds = random_set(llama)
    with pytest.raises(InterventionError, match="only an ablation over layers 0..b"):
        export_model(llama, Ablate(ds, layers=[1, 2], source_layer=1), tmp_path / "a")
    with pytest.raises(InterventionError, match="different direction at each layer"):
        export_model(llama, Ablate(ds), tmp_path / "b")
    for arch in ("gemma3", "olmo2"):  # outputs normalised before the residual add
        with pytest.raises(UnsupportedModelError, match="normalises each block's outputs"):
            export_model(tiny_models[arch], Ablate(random_set(tiny_models[arch]), source_layer=1), tmp_path / arch)
    phi3 = tiny_models["phi3"]
    with pytest.raises(UnsupportedModelError, match="cannot declare one"):
        export_model(phi3, Steer(random_set(phi3), alpha=1.0, layers=[2], scope="both"), tmp_path / "phi3")
    other = random_set(llama)
    other = DirectionSet(**{**other.__dict__, "provenance": {"model": {"name": "someone-else"}}})
    with pytest.raises(DModelMismatchError, match="fitted on 'someone-else'"):
        export_model(llama, Ablate(other, source_layer=1), tmp_path / "c")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputExistsError):
        export_model(llama, Ablate(ds, source_layer=1), tmp_path / "mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing was written for the refusals
    export_model(llama, Ablate(other, source_layer=1), tmp_path / "c", allow_other_model=True)


def test_bad_steering_inputs_are_named_errors(tiny_models, tmp_path):
    llama = tiny_models["llama"]
    ds = random_set(llama, "persona")
    with pytest.raises(InterventionError, match="form of an ablation"):
        export_model(llama, Steer(ds, alpha=1.0, layers=[1], scope="both"), tmp_path / "t", through_last_block=True)
    with pytest.raises(InterventionError, match="scope='both'"):
        export_model(llama, Steer(ds, alpha=1.0, layers=[1]), tmp_path / "a")  # Steer's default scope is the prompt
    with pytest.raises(Exception, match="layer"):
        export_model(llama, Steer(ds, alpha=1.0, layers=[99], scope="both"), tmp_path / "b")
    mid = DirectionSet(**{**ds.__dict__, "sites": tuple(HookSite(s.layer, "resid_mid") for s in ds.sites)})
    with pytest.raises(InterventionError, match="Fit the directions at resid_pre"):
        export_model(llama, Steer(mid, alpha=1.0, layers=[1], scope="both"), tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_the_exported_folder_loads_without_persona_gate(tiny_models, tmp_path):
    model = tiny_models["qwen2"]
    ids = _ids(model)
    spec = Ablate(random_set(model), source_layer=2)
    out = export_model(model, spec, tmp_path / "x")
    probe = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'persona_gate': raise ImportError('persona_gate is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import json, torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, dtype=torch.float32, attn_implementation='eager')\n"
        f"t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        "assert t.chat_template\n"
        f"ids = torch.tensor({ids.tolist()})\n"
        "print(json.dumps(m(ids).logits[:, -1].tolist()))\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    got = torch.tensor(json.loads(res.stdout.strip().splitlines()[-1]))
    assert (got - _hooked(model, spec, ids)[:, -1]).abs().max() <= TOL


def test_ablating_refusal_gives_the_same_refusal_rate_from_the_exported_organism(tmp_path):
    import persona_gate as pg
    from persona_gate.experiments import RefusalScorer, eval_groups

    model = pg.load_chat_model("organism", device="cpu")
    pr = pg.fit_persona_and_refusal(model, n_per_group=24, progress=False)
    spec = Ablate(pr.refusal, layers=range(int(model.cfg.n_layers)), source_layer=3)
    out = export_model(model, spec, tmp_path / "no-refusal")
    prompts = eval_groups(model, 24)["safe/harmful"]
    scorer = RefusalScorer.for_model(model)
    base_lo, base = scorer.score(prompts)
    hooked_lo, hooked = scorer.score(prompts, *hooked_equivalent(model, spec))
    exported = pg.load_chat_model(out, device="cpu")
    assert pg.profile_of(exported).name == "organism"  # the profile travels with the export
    plain_lo, plain = RefusalScorer.for_model(exported).score(prompts)
    assert float((hooked_lo - base_lo).abs().mean()) > 0.5  # the ablation moves the refusal log-odds ...
    assert (plain_lo - hooked_lo).abs().max() <= 1e-3  # ... and the exported weights move them the same way
    assert torch.equal(plain, hooked)  # the same refusal rate, prompt for prompt
    ids = torch.tensor([model.tokenizer.encode("hello there, how do I open a door?")])
    assert (_plain(out, ids) - _hooked(model, spec, ids)).abs().max() <= TOL  # and the same logits everywhere


def test_control_vector_reads_back_with_gguf(tiny_models, tmp_path):
    from gguf import GGUFReader

    import persona_gate as pg

    model = pg.load_chat_model("organism", device="cpu")  # 6 layers: llama.cpp's direction.1 .. direction.4
    ds = random_set(model, "persona", seed=5)
    path = export_control_vector(ds, tmp_path / "persona.gguf", alpha=4.0, layers=[2, 3])
    r = GGUFReader(str(path))
    fields = {k: f for k, f in r.fields.items()}

    def text(key):
        f = fields[key]
        return bytes(f.parts[f.data[0]]).decode()

    assert text("general.architecture") == "controlvector"
    assert int(fields["controlvector.layer_count"].parts[-1][0]) == 2
    assert json.loads(text("persona_gate.layers")) == {"1": 2, "2": 3}
    got = {t.name: torch.tensor(t.data.copy()) for t in r.tensors}
    assert sorted(got) == ["direction.1", "direction.2"]
    for layer in (2, 3):
        want = ds.at(layer) * 4.0 * float(ds.raw_norms[layer])
        t = got[f"direction.{layer - 1}"]
        assert t.dtype == torch.float32 and t.shape == (int(model.cfg.d_model),)
        assert torch.allclose(t, want, atol=1e-6)
    with pytest.raises(InterventionError, match="choose layers >= 2"):
        export_control_vector(ds, tmp_path / "bad.gguf", layers=[1])
    with pytest.raises(InterventionError, match="does not end in .gguf"):
        export_control_vector(ds, tmp_path / "bad.bin", layers=[2])


def test_directions_export_round_trips_with_safetensors_alone(tiny_models, tmp_path):
    from safetensors.torch import load_file

    ds = random_set(tiny_models["llama"], "persona", seed=7)
    path = ds.export(tmp_path / "persona")
    assert path.name == "persona.safetensors"
    tensors = load_file(str(path))
    side = json.loads(path.with_suffix(".json").read_text())
    assert sorted(tensors) == sorted(f"layer.{i}" for i in ds.layers)
    for i in ds.layers:
        assert torch.equal(tensors[f"layer.{i}"], ds.at(i))
        assert side["raw_norms"][str(i)] == pytest.approx(float(ds.raw_norms[i]), abs=1e-6)
    assert (
        side["site"] == "resid_pre" and "hook_resid_pre" in side["layer_convention"] and side["d_model"] == ds.d_model
    )


def test_the_export_commands(tmp_path, capsys):
    from gguf import GGUFReader
    from safetensors.torch import load_file

    from persona_gate.cli.main import main

    dirs = tmp_path / "dirs"
    assert main(["directions", "--out", str(dirs), "--n", "12", "--no-progress"]) == 0
    persona = DirectionSet.load(dirs / "persona")
    assert (
        main(
            [
                "export",
                "model",
                "--directions",
                str(dirs),
                "--ablate",
                "refusal",
                "--source-layer",
                "3",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "m" / EXPORT_FILE).read_text())
    assert record["intervention"]["layers"] == [0, 5] and record["intervention"]["source_layer"] == 3
    assert record["intervention"]["through_last_block"] is True and record["intervention"]["edited_blocks"] == [0, 5]
    said = capsys.readouterr().out
    assert "through the last block" in said and "every write of the model" in said  # the message says the form
    window = ["export", "model", "--directions", str(dirs), "--ablate", "refusal", "--source-layer", "3"]
    assert main([*window, "--no-through-last-block", "--out", str(tmp_path / "w")]) == 0
    record = json.loads((tmp_path / "w" / EXPORT_FILE).read_text())["intervention"]
    assert record["through_last_block"] is False and record["edited_blocks"] == [0, 4] and record["layers"] == [0, 5]
    assert "window: the embeddings and blocks 0..4 edited" in capsys.readouterr().out
    assert main([*window, "--layers", "0,1,2", "--through-last-block", "--out", str(tmp_path / "w3")]) == 0
    record = json.loads((tmp_path / "w3" / EXPORT_FILE).read_text())["intervention"]
    assert record["through_last_block"] is True and record["edited_blocks"] == [0, 2] and record["layers"] == [0, 2]
    assert (
        main(
            [
                "export",
                "control-vector",
                "--directions",
                str(dirs),
                "--alpha",
                "2",
                "--layers",
                "3,4",
                "--out",
                str(tmp_path / "cv.gguf"),
            ]
        )
        == 0
    )
    tensors = {t.name: torch.tensor(t.data.copy()) for t in GGUFReader(str(tmp_path / "cv.gguf")).tensors}
    assert torch.allclose(tensors["direction.2"], persona.at(3) * 2 * float(persona.raw_norms[3]), atol=1e-6)
    assert (
        main(
            [
                "export",
                "directions",
                "--directions",
                str(dirs),
                "--set",
                "refusal",
                "--out",
                str(tmp_path / "r.safetensors"),
            ]
        )
        == 0
    )
    assert torch.equal(load_file(str(tmp_path / "r.safetensors"))["layer.4"], DirectionSet.load(dirs / "refusal").at(4))
    capsys.readouterr()
    assert (
        main(["export", "model", "--directions", str(dirs), "--ablate", "refusal", "--out", str(tmp_path / "no")]) == 2
    )
    assert "--source-layer" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert (
        main(["export", "model", "--directions", str(dirs), "--steer", "persona", "--out", str(tmp_path / "no")]) == 2
    )
    assert "--alpha and --layers" in capsys.readouterr().err and not (tmp_path / "no").exists()
    steer = ["export", "model", "--directions", str(dirs), "--steer", "persona", "--alpha", "2", "--layers", "2"]
    assert main([*steer, "--through-last-block", "--out", str(tmp_path / "no")]) == 2
    assert "form of --ablate" in capsys.readouterr().err and not (tmp_path / "no").exists()
