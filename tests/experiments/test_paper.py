"""The paper configs parse, public harmful sets plug into the pipeline, and the figure script
redraws every figure from a saved run alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from persona_gate.experiments.pipeline import DEMO, RunConfig, harmful_requests, run_pipeline

PAPER = Path(__file__).resolve().parents[2] / "paper"


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.toml")), ids=lambda p: p.name)
def test_paper_configs_parse(path):
    cfg = RunConfig.from_toml(path)
    assert cfg.model and cfg.random_seeds >= 5


def test_strongreject_replaces_the_harmful_requests(shared_data):
    cfg = RunConfig(
        harmful_dataset="strongreject", harmful_source=str(shared_data / "strongreject" / "strongreject_dataset.csv")
    )
    requests = harmful_requests(cfg)
    assert len(requests) == 313 and all(r.harmful for r in requests)


def test_figure_script_redraws_from_a_saved_run(tmp_path):
    cfg = RunConfig.from_dict({**DEMO.__dict__, "n_fit": 24, "n_eval": 8, "alphas": [0.0, 4.0], "patch_examples": 2})
    run_pipeline(cfg, tmp_path / "run", progress=False)
    spec = importlib.util.spec_from_file_location("make_figures", PAPER / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.make_figures(tmp_path / "run", tmp_path / "figs")
    assert [p.name for p in written] == [
        "steering_sweep.html",
        "reintroduction.html",
        "window_projection.html",
        "patching.html",
        "direction_patching.html",
        "report.html",
    ]
    assert all(p.stat().st_size > 10_000 for p in written)
