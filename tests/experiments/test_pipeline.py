"""The resumable pipeline and the demo/run commands: real numbers on the organism, resume, config errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from persona_gate.cli.main import main
from persona_gate.experiments.pipeline import DEMO, ConfigError, RunConfig, run_pipeline
from persona_gate.results import LabelledResult

SMALL = RunConfig.from_dict(
    {**DEMO.__dict__, "n_fit": 24, "n_eval": 8, "alphas": [0.0, 4.0], "patch_examples": 2, "window_width": 3}
)


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
        str(layer): pytest.approx(float(v), abs=1e-4)
        for layer, v in zip(back.coords["layer"], back.mean("example")["refused"])
    }
    w = windows.mean("example")["refused"]
    assert s["window_refusal"]["1-3"]["persona"] == pytest.approx(float(w[0, 1, 3]), abs=1e-4)
    assert s["window_refusal"]["1-3"]["random_max"] == pytest.approx(float(w[1:, 1, 3].max()), abs=1e-4)
    assert set(s["seconds"]) >= {
        "directions",
        "steering_sweep",
        "reintroduction",
        "window_projection",
        "patching",
        "direction_patching",
        "total",
    }
    assert s["versions"]["persona_gate"] and s["seed"] == 0


def test_rerun_skips_finished_stages_and_redoes_a_corrupt_one(run_dir):
    stamps = {
        p.name: os.stat(p / "manifest.json").st_mtime_ns for p in run_dir.iterdir() if (p / "manifest.json").exists()
    }
    (run_dir / "reintroduction" / "tensors.safetensors").write_bytes(b"truncated")
    again = run_pipeline(SMALL, run_dir, progress=False)
    assert again["reused_stages"] == [
        "directions",
        "steering_sweep",
        "window_projection",
        "patching",
        "direction_patching",
    ]
    after = {
        p.name: os.stat(p / "manifest.json").st_mtime_ns for p in run_dir.iterdir() if (p / "manifest.json").exists()
    }
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


def test_extraction_sites_stage_runs_when_asked_and_is_summarised_and_drawn(tmp_path):
    from persona_gate.plots.report import write_report

    cfg = RunConfig.from_dict({**SMALL.__dict__, "layers": [2, 3, 4], "extraction_sites": True})
    s = run_pipeline(cfg, tmp_path / "run", progress=False)
    sites = LabelledResult.load(tmp_path / "run" / "extraction_sites")
    assert sites.coords["layer"] == (2, 3, 4) and sites.config["n"] == 8 and sites.config["n_fit"] == 24
    rate, effects = sites.values["rate"], list(sites.coords["effect"])
    for pi, pos in enumerate(sites.coords["position"]):  # the summary's picks, recomputed from the saved tensor
        row = s["extraction_sites"]["positions"][pos]
        steer = [float(rate[pi, li, effects.index("steering_refusal")]) for li in range(3)]
        abl = [float(rate[pi, li, effects.index("ablation_refusal")]) for li in range(3)]
        moved_s = round(min(steer), 4) < round(sites.baselines["safe/harmful"], 4)
        moved_a = round(max(abl), 4) > round(sites.baselines["compliant/harmful"], 4)
        assert row["steering_refusal"] == pytest.approx(min(steer), abs=1e-4)
        assert row["steering_layer"] == ((2, 3, 4)[steer.index(min(steer))] if moved_s else None)
        assert row["ablation_refusal"] == pytest.approx(max(abl), abs=1e-4)
        assert row["ablation_layer"] == ((2, 3, 4)[abl.index(max(abl))] if moved_a else None)
    windows = LabelledResult.load(tmp_path / "run" / "window_projection")
    assert [tuple(w) for w in windows.config["windows"]] == [(2, 4)]  # the one width-3 window of fitted layers
    # the system-prompt mean carries the organism's gate; the last token does not
    assert s["extraction_sites"]["positions"]["mean:system"]["ablation_refusal"] >= 0.5
    assert s["extraction_sites"]["positions"]["last"]["ablation_refusal"] < 0.5
    assert "Where the persona direction is read" in write_report(tmp_path / "run").read_text()
    # a run without the stage shows no such section, and one started before the key existed resumes
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    plain = RunConfig.from_dict({**cfg.__dict__, "extraction_sites": False})
    config.pop("extraction_sites")
    shutil.copytree(
        tmp_path / "run", tmp_path / "old", ignore=shutil.ignore_patterns("extraction_sites", "summary.json")
    )
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    again = run_pipeline(plain, tmp_path / "old", progress=False)
    assert "extraction_sites" not in again and set(again["reused_stages"]) == {
        "directions",
        "steering_sweep",
        "reintroduction",
        "window_projection",
        "patching",
        "direction_patching",
    }
    assert "Where the persona direction is read" not in write_report(tmp_path / "old").read_text()


def test_layers_without_a_whole_window_fail_before_any_work(tmp_path):
    cfg = RunConfig.from_dict({**SMALL.__dict__, "layers": [2, 4]})
    with pytest.raises(ConfigError, match="hold no window of width 3"):
        run_pipeline(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "directions").exists()
    with pytest.raises(ConfigError, match="names layer 9, but organism has 6"):
        run_pipeline(RunConfig.from_dict({**SMALL.__dict__, "layers": [9]}), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="'window_width' is 9"):
        run_pipeline(RunConfig.from_dict({**SMALL.__dict__, "window_width": 9}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()  # a rejected config does not pin the folder: fix it in place


# summary.json's keys, in order, as the dict-building summarise wrote them before RunSummary.
_SUMMARY_KEYS = [
    "model",
    "n_layers",
    "dtype",
    "n_prompts_per_group",
    "baseline_refusal_rate",
    "harmless_refusal_rate",
    "steered_refusal_rate",
    "steered_at",
    "compliant_persona_refusal_rate",
    "reintroduction_refusal_by_layer",
    "window_refusal",
    "verdicts",
    "gate_window",
    "gate_layers",
    "patching_by_layer",
    "direction_patching_by_layer",
    "cos_persona_refusal_by_layer",
    "seconds",
    "seed",
    "versions",
    "config",
    "reused_stages",
    "processes",
    "stages",
]


def test_the_run_summary_is_typed_and_is_summary_json(run_dir):
    from persona_gate.experiments.summary import RunSummary

    text = (run_dir / "summary.json").read_text()
    saved = json.loads(text)
    s = RunSummary.load(run_dir)
    assert list(saved) == [*_SUMMARY_KEYS, "schema_version"] and saved["schema_version"] == 1
    assert s.to_json(indent=1) == text and RunSummary.from_json(text) == s and s.to_dict() == saved
    assert s.baseline_refusal_rate == s["baseline_refusal_rate"] and s.n_layers == 6 and s.processes == 1
    assert s.verdicts.to_dict() == saved["verdicts"] and s.gate_window.start == saved["gate_window"]["start"]
    again = run_pipeline(SMALL, run_dir, progress=False)  # every stage reused: the summary is the same bar timing
    assert isinstance(again, RunSummary)
    assert {k: v for k, v in again.items() if k not in ("seconds", "reused_stages")} == {
        k: v for k, v in saved.items() if k not in ("seconds", "reused_stages")
    }
