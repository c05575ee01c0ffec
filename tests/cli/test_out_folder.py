"""A command that fails validation writes nothing: its ``--out`` folder does not exist afterwards.

``persona-gate directions --layers 1,99 --out X`` used to fail on the layer and leave an empty
(marked) folder X behind; now every command with ``--out`` removes a folder it created and wrote
no result into (persona_gate.cli.common.tidy_out_on_failure), and a folder that was there before
is left as it was.
"""

from __future__ import annotations

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
    "export": (["export", "model", "--model", "{m}", "--directions", "{root}/none", "--ablate", "persona"], "none"),
}


@pytest.mark.parametrize("command", sorted(CASES))
def test_a_failed_command_leaves_no_out_folder(inputs, command, capsys):
    root, model = inputs
    argv, says = CASES[command]
    out = root / f"X-{command}" / "nested"
    quiet = [] if command == "export" else ["--no-progress"]
    code = main([a.format(m=model, root=root) for a in argv] + ["--out", str(out), *quiet])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err
    assert not out.exists() and not out.parent.exists()


def test_a_folder_that_was_there_is_left_as_it_was(inputs, capsys):
    root, model = inputs
    out = root / "existing"
    out.mkdir()
    assert main(["directions", "--model", model, "--layers", "99", "--out", str(out), "--no-progress"]) == 2
    assert out.is_dir()
    capsys.readouterr()
