"""The CLI, as a user runs it: a table on stdout, saved folders, one-line errors with the fix."""

from __future__ import annotations

import torch

from persona_gate import DirectionSet, fit_persona_and_refusal, standard_prompts
from persona_gate.cli.main import main


def test_directions_prints_a_row_per_layer_and_saves(tiny_model_dirs, tiny_models, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "directions",
            "--model",
            str(tiny_model_dirs["qwen2"]),
            "--n",
            "4",
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("resid_pre.")]
    assert [r.split()[0] for r in rows] == ["resid_pre.0", "resid_pre.1", "resid_pre.2"]
    saved = DirectionSet.load(out / "persona")
    direct = fit_persona_and_refusal(tiny_models["qwen2"], standard_prompts(n_per_group=4, seed=0), progress=False)
    assert torch.allclose(saved.vectors, direct.persona.vectors, atol=1e-6)
    assert (out / "summary.json").is_file() and (out / "refusal" / "manifest.json").is_file()


def test_errors_are_one_line_with_the_fix(tiny_model_dirs, capsys):
    assert main(["directions", "--model", "./no/such/model", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("persona-gate: error:") and "check the path" in err and "\n" not in err
    assert (
        main(
            [
                "directions",
                "--model",
                str(tiny_model_dirs["llama"]),
                "--layers",
                "7",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "out of range" in capsys.readouterr().err
