"""The resumable pipeline and the demo/run commands: real numbers on the organism, resume, config errors."""

from __future__ import annotations

import json
import os

import pytest

from persona_gate.cli.main import main
from persona_gate.experiments.pipeline import DEMO, ConfigError, RunConfig, run_pipeline
from persona_gate.results import LabelledResult

SMALL = RunConfig.from_dict({**DEMO.__dict__, "n_fit": 24, "n_eval": 8, "alphas": [0.0, 4.0], "patch_examples": 2})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_pipeline(SMALL, out, progress=False)
    return out


def test_summary_matches_the_result_folders(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    sweep = LabelledResult.load(run_dir / "steering_sweep")
    back = LabelledResult.load(run_dir / "reintroduction")
    windows = LabelledResult.load(run_dir / "window_projection")
    assert s["n_layers"] == 6 and s["model"] == "organism"
    assert s["baseline_refusal_rate"] == sweep.baselines["unsteered_harmful_refusal_rate"] >= 0.9
    rates = sweep.sel(request="harmful").mean("example")["refused"]
    assert s["steered_refusal_rate"] == pytest.approx(float(rates.min()), abs=1e-4) and s["steered_refusal_rate"] <= 0.1
    assert s["reintroduction_refusal_by_layer"] == {
        str(layer): pytest.approx(float(v), abs=1e-4) for layer, v in zip(back.coords["layer"], back.mean("example")["refused"])
    }
    w = windows.mean("example")["refused"]
    assert s["window_refusal"]["1-3"]["persona"] == pytest.approx(float(w[0, 1, 3]), abs=1e-4)
    assert s["window_refusal"]["1-3"]["random_max"] == pytest.approx(float(w[1:, 1, 3].max()), abs=1e-4)
    assert set(s["seconds"]) >= {"directions", "steering_sweep", "reintroduction", "window_projection", "patching", "total"}
    assert s["versions"]["persona_gate"] and s["seed"] == 0


def test_rerun_skips_finished_stages_and_redoes_a_corrupt_one(run_dir):
    stamps = {p.name: os.stat(p / "manifest.json").st_mtime_ns for p in run_dir.iterdir() if (p / "manifest.json").exists()}
    (run_dir / "reintroduction" / "tensors.safetensors").write_bytes(b"truncated")
    again = run_pipeline(SMALL, run_dir, progress=False)
    assert again["reused_stages"] == ["directions", "steering_sweep", "window_projection", "patching"]
    after = {p.name: os.stat(p / "manifest.json").st_mtime_ns for p in run_dir.iterdir() if (p / "manifest.json").exists()}
    assert after["steering_sweep"] == stamps["steering_sweep"] and after["patching"] == stamps["patching"]
    assert after["reintroduction"] != stamps["reintroduction"]
    LabelledResult.load(run_dir / "reintroduction")


def test_config_files_and_bad_keys(tmp_path, capsys):
    good = tmp_path / "run.toml"
    good.write_text('model = "organism"\nn_eval = 8\nalphas = [0.0, 4.0]\n')
    assert RunConfig.from_toml(good).n_eval == 8
    bad = tmp_path / "bad.toml"
    bad.write_text("n_evals = 8\n")
    with pytest.raises(ConfigError, match="unknown keys \\['n_evals'\\]"):
        RunConfig.from_toml(bad)
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "unknown keys" in capsys.readouterr().err
