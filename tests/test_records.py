"""The typed JSON records (``persona_gate.io.Record``): round trips, schema versions, the read-only
mapping that keeps dict-style callers working, the saved files they read, and the metric forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from persona_gate.errors import ArtefactError, ResultError, SchemaVersionError
from persona_gate.experiments.summary import RunSummary, format_run_summary
from persona_gate.experiments.verdicts import GateWindow, Rate, Verdict, Verdicts
from persona_gate.guard.grid import GuardGridConfig, guard_grid
from persona_gate.redteam.harness import RedTeamConfig, red_team
from persona_gate.results import LabelledResult
from persona_gate.screening.summary import format_validation
from persona_gate.screening.validation import DatasetValidation, ScreeningValidation

REPO = Path(__file__).resolve().parents[1]
GEMMA_SUMMARY = REPO / "paper" / "results" / "gemma3-270m-chat" / "summary.json"
SCREENINGS = sorted((REPO / "paper" / "results" / "defences").glob("screening-*.json"))


def test_a_saved_run_summary_reads_back_key_for_key_and_gains_only_its_version():
    saved = json.loads(GEMMA_SUMMARY.read_text(encoding="utf-8"))  # written before summaries carried a version
    s = RunSummary.load(GEMMA_SUMMARY.parent)
    assert s.to_dict() == {**saved, "schema_version": 1} and list(s) == [*saved, "schema_version"]
    assert RunSummary.from_json(s.to_json()) == s and json.loads(s.to_json()) == s.to_dict()
    # Typed access and the dict-style access the README, notebooks and tests use agree.
    assert isinstance(s.verdicts, Verdicts) and isinstance(s.gate_window, GateWindow)
    assert (
        s["verdicts"]["steering"]["verdict"] == s.verdicts.steering.verdict == saved["verdicts"]["steering"]["verdict"]
    )
    assert s.get("gate_window")["start"] == s.gate_window.start and "extraction_sites" in s and "nope" not in s
    assert s.get("nope", 3) == 3 and dict(s.items()) == s.to_dict() and set(s.keys()) == set(saved) | {"schema_version"}
    assert format_run_summary(s, "x") == format_run_summary(saved, "x")
    # Read-only: what comes out is a copy.
    s["verdicts"]["steering"]["verdict"] = "changed"
    assert s["verdicts"]["steering"]["verdict"] == saved["verdicts"]["steering"]["verdict"]
    with pytest.raises(TypeError):
        s["model"] = "x"  # type: ignore[index]


def test_records_refuse_a_newer_schema_and_a_file_that_is_not_theirs(tmp_path):
    saved = json.loads(GEMMA_SUMMARY.read_text(encoding="utf-8"))
    with pytest.raises(SchemaVersionError, match="upgrade persona_gate"):
        RunSummary.from_dict({**saved, "schema_version": 99})
    with pytest.raises(ArtefactError, match="lacks"):
        RunSummary.from_dict({"model": "x"})
    with pytest.raises(ArtefactError, match="no summary.json"):
        RunSummary.load(tmp_path)
    with pytest.raises(ArtefactError):
        ScreeningValidation.from_dict([1, 2])  # type: ignore[arg-type]
    # A key a newer writer added is kept, in place.
    more = RunSummary.from_dict({**saved, "later": {"x": 1}})
    assert more["later"] == {"x": 1} and list(more)[-2:] == ["later", "schema_version"]


def test_verdict_records_round_trip_in_both_forms():
    tested = Verdict(
        "holds",
        "claim",
        "reason",
        0.9,
        0.8,
        1.0,
        (("unsteered", Rate.of(32, 32)), ("steered", Rate.of(1, 32))),
        3,
        {"at": {"layer": 2, "alpha": 4.0}},
    )
    assert list(tested) == [
        "verdict",
        "claim",
        "effect",
        "low",
        "high",
        "unsteered",
        "steered",
        "candidates",
        "at",
        "reason",
    ]
    untested = Verdict("inconclusive", "claim", "no refusal", details={"baseline": Rate.of(0, 8).to_dict()})
    assert list(untested) == ["verdict", "claim", "effect", "low", "high", "reason", "baseline"]
    for v in (tested, untested, Rate.of(3, 7)):
        assert type(v).from_dict(v.to_dict()) == v and type(v).from_json(v.to_json()) == v
        assert "schema_version" not in v and json.loads(v.to_json())["schema_version"] == 1  # nested: no key inside
    assert tested.holds and tested.tested and not untested.tested and untested.effect is None
    vs = Verdicts(tested, untested, tested)
    assert Verdicts.from_json(vs.to_json()) == vs and vs["reintroduction"] == untested.to_dict()
    legacy = GateWindow.from_dict({"start": 1, "end": 3, "evidence": {"from": "projection", "patching_within": [2]}})
    assert GateWindow.from_json(legacy.to_json()) == legacy and legacy["evidence"]["patching_within"] == [2]
    assert not legacy.localised and legacy.statement.startswith("gate: layers 1-3 (from projection); recorded before")


@pytest.mark.parametrize("path", SCREENINGS, ids=lambda p: p.stem)
def test_a_saved_screening_validation_reads_back_key_for_key(path):
    saved = json.loads(path.read_text(encoding="utf-8"))
    v = ScreeningValidation.from_dict(saved)
    assert v.to_dict() == {**saved, "schema_version": 1} and list(v)[:-1] == list(saved)
    assert ScreeningValidation.from_json(v.to_json(indent=2)) == v
    assert all(isinstance(r, DatasetValidation) for r in v.datasets.values())
    assert v["datasets"] == saved["datasets"] and v.spearman == saved["spearman"]
    assert format_validation(v) == format_validation(saved)
    assert ("compute_seconds" in v) == ("compute_seconds" in saved)  # absent from validations that predate it


def test_the_metric_takes_either_documented_form_and_nothing_else():
    v = {"x": torch.zeros(2)}
    for metric in ({"name": "refusal", "higher_means": "more refusal"}, {"x": "the share refused", "cap": "prose"}):
        assert LabelledResult("k", ("i",), {"i": (0, 1)}, v, metric=metric).metric == metric
    for bad in ({"name": 3}, {"x": ["a"]}, {"": "empty name"}):
        with pytest.raises(ResultError, match="metric maps names to prose"):
            LabelledResult("k", ("i",), {"i": (0, 1)}, v, metric=bad)


def test_the_wide_entry_points_take_a_frozen_config_and_their_keywords():
    cfg = GuardGridConfig(percentiles=(50, 90))
    with pytest.raises(AttributeError):
        cfg.n = 3  # type: ignore[misc]
    # An unknown keyword fails before any work (no model is touched).
    with pytest.raises(TypeError, match="bogus"):
        guard_grid(None, None, config=cfg, bogus=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bogus"):
        red_team(None, None, config=RedTeamConfig(n=2), bogus=1)  # type: ignore[arg-type]
