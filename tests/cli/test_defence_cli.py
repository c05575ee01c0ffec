"""`persona-gate screen` and `persona-gate guard` as a user runs them: summary keys, resumption, bad input
before any work, and their reports."""

from __future__ import annotations

import json

import pytest

from persona_gate.cli.main import main
from persona_gate.plots.report import write_report
from persona_gate.results import LabelledResult
from persona_gate.screening.data import write_chat_jsonl
from persona_gate.screening.validation import organism_datasets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("screen_cli")
    examples, _ = organism_datasets(40, seed=1, fractions=(0.3,), extra=False)["compliance-0.3"]
    return write_chat_jsonl(examples, root / "ft.jsonl")


def test_screen_writes_its_summary_and_resumes(data, tmp_path, capsys):
    out = tmp_path / "screen"
    assert main(["screen", str(data), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "dataset score" in printed and "most compliance-pushing examples" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert {"dataset_score", "dataset_score_ci", "spearman", "top", "layers"} <= set(summary)
    assert summary["spearman"] is None  # no validation was run
    res = LabelledResult.load(out / "screening")
    assert summary["dataset_score"] == pytest.approx(res.baselines["dataset_score"]["mean"])
    assert (out / "screening.html").is_file() and (out / "persona").is_dir()
    # A second run on the same folder reuses its directions and every finished chunk.
    assert main(["screen", str(data), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["dataset_score"] == summary["dataset_score"]
    page = write_report(out).read_text()
    assert "Screening fine-tuning data" in page and "dataset score" in page


def test_a_malformed_line_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}\n{oops\n')

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr("persona_gate.models.loading.load_chat_model", no_model)
    assert main(["screen", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "line 2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["screen", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "pass the fine-tuning data" in capsys.readouterr().err


def test_guard_writes_the_recommended_setting_and_its_report(tmp_path, capsys):
    out = tmp_path / "guard"
    rc = main(
        ["guard", "--windows", "1-3,3-5", "--percentiles", "50,99", "--n", "8", "--out", str(out), "--no-progress"]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "recommended: window" in printed and "generated replies" in printed
    summary = json.loads((out / "summary.json").read_text())
    rec = summary["recommended"]
    assert list(rec)[:5] == ["window", "percentile", "persona_bypass", "harmless_refusal", "random_bypass"]
    res = LabelledResult.load(out / "guard_grid")
    assert rec == res.baselines["recommended"]
    assert res.coords["window"] == ("1-3", "3-5") and res.coords["percentile"] == (50.0, 99.0)
    assert summary["verified"]["persona"]["persona_bypass"] <= 0.25  # 8 requests: loose, the organism test is exact
    page = write_report(out).read_text()
    assert "Recommended: cap layers" in page and "Guarding the gate" in page
    assert main(["guard", "--windows", "1-9", "--out", str(tmp_path / "g2"), "--no-progress"]) == 2
    assert "not inside this model's layers 0-5" in capsys.readouterr().err
    assert not (tmp_path / "g2" / "persona").exists()  # failed before any direction was fitted
