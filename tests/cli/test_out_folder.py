"""A command that fails validation creates nothing: its ``--out`` folder is never made.

``persona-gate directions --layers 1,99 --out X`` used to fail on the layer and leave an empty
(marked) folder X behind. Now every command checks ``--out`` before the model loads, the inputs
that need the model next, and makes the folder only then; a folder it made and wrote no result
into is removed if it fails later (persona_gate.cli.common.tidy_out_on_failure), and a folder
that was there before is left as it was.
"""

from __future__ import annotations

import os

import pytest

from persona_gate.cli.main import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dirs):
    root = tmp_path_factory.mktemp("out-folder")
    (root / "chat.jsonl").write_text('{"role": "user", "content": "hello"}\n')
    (root / "data.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    (root / "layers.toml").write_text(f'model = "{tiny_model_dirs["qwen2"]}"\nlayers = [1, 99]\n')
    return root, str(tiny_model_dirs["qwen2"])


CASES = {  # argv after the command; the model is the tiny qwen2 (3 layers)
    "directions": (["directions", "--model", "{m}", "--layers", "1,99"], "layer 99 is out of range"),
    "guard": (["guard", "--model", "{m}", "--windows", "1-99"], "not inside this model's layers"),
    "monitor": (["monitor", "{root}/chat.jsonl", "--model", "{m}", "--directions", "{root}/none"], "none"),
    "redteam": (["redteam", "--model", "{m}", "--directions", "{root}/none"], "none"),
    "screen": (["screen", "{root}/data.jsonl", "--model", "{m}", "--directions", "{root}/none"], "none"),
    "run": (["run", "--config", "{root}/layers.toml"], "names layer 99"),
    "compare": (["compare", "--model-a", "{m}", "--model-b", "{m}", "--layers", "1,99"], "layer 99 is out of range"),
    "export": (["export", "model", "--model", "{m}", "--directions", "{root}/none", "--ablate", "persona"], "none"),
}


@pytest.mark.parametrize("command", sorted(CASES))
def test_a_failed_command_never_makes_its_out_folder(inputs, command, capsys, monkeypatch):
    root, model = inputs
    argv, says = CASES[command]
    out = root / f"X-{command}" / "nested"
    made = []
    mkdir = os.mkdir

    def spy(path, *a, **k):  # every folder made, also one removed again before the command returns
        made.append(os.fspath(path))
        return mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", spy)
    quiet = [] if command == "export" else ["--no-progress"]
    code = main([a.format(m=model, root=root) for a in argv] + ["--out", str(out), *quiet])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err
    assert not out.exists() and not out.parent.exists()
    assert not [p for p in made if p.startswith(str(out.parent))], made  # not made and removed: never made


def test_out_is_checked_before_the_model_loads(inputs, capsys, monkeypatch):
    import persona_gate.models.loading as loading

    root, model = inputs
    (root / "a-file").write_text("mine")
    monkeypatch.setattr(loading, "load_chat_model", lambda *a, **k: pytest.fail("the model loaded first"))
    for argv in (["directions", "--model", model], ["guard", "--model", model], ["demo"]):
        assert main([*argv, "--out", str(root / "a-file" / "x"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"cannot write to {root / 'a-file' / 'x'} ({root / 'a-file'} is a file, not a folder)" in err, err


def test_a_folder_that_was_there_is_left_as_it_was(inputs, capsys):
    root, model = inputs
    out = root / "existing"
    out.mkdir()
    assert main(["directions", "--model", model, "--layers", "99", "--out", str(out), "--no-progress"]) == 2
    assert out.is_dir()
    capsys.readouterr()
