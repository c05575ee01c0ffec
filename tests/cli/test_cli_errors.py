"""Every CLI failure a user can cause is one line on stderr and exit status 2 (Ctrl-C: 130), at once."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest

from persona_gate import __version__
from persona_gate.cli.main import main
from persona_gate.models.loading import organism_dir


def _one_line_error(capsys, argv: list[str], pattern: str) -> None:
    import re

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("persona-gate: error: "), err
    assert re.search(pattern, err[0]), err[0]


@pytest.fixture
def broken_folders(tmp_path):
    """Copies of the organism with a truncated weight file, and without tokenizer files."""
    truncated = shutil.copytree(organism_dir(), tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    untokenized = shutil.copytree(organism_dir(), tmp_path / "untokenized")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (untokenized / f).unlink()
    return {"truncated": truncated, "untokenized": untokenized}


@pytest.mark.parametrize(
    "case, argv, pattern",
    [
        ("no CUDA here", ["directions", "--device", "cuda", "--n", "4"], r"does not have; pass --device cpu"),
        ("unknown device", ["directions", "--device", "tpu9", "--n", "4"], r"unknown device 'tpu9'; pass cpu, cuda"),
        ("typo of a bundled model", ["directions", "--model", "organsim", "--n", "4"], r"did you mean organism\?"),
        ("truncated weights", ["directions", "--model", "{truncated}", "--n", "4"], r"truncated or corrupt.*again"),
        (
            "folder without a tokenizer",
            ["directions", "--model", "{untokenized}", "--n", "4"],
            r"no tokenizer.*save_pretrained",
        ),
    ],
)
def test_cli_input_errors_are_one_line(capsys, broken_folders, case, argv, pattern, monkeypatch):
    if case == "no CUDA here":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    import persona_gate.core.contrasts as contrasts
    import persona_gate.models.loading as loading

    def no_work(*a, **k):
        raise AssertionError("the error should come before this")

    monkeypatch.setattr(contrasts, "fit_persona_and_refusal", no_work)  # at once: no fitting first
    monkeypatch.setattr(loading, "_reachable_or_cached", no_work)  # ... and no hub access for a typo
    argv = [a.format(**broken_folders) for a in argv]
    _one_line_error(capsys, argv, pattern)


def test_unreachable_hub_fails_at_once_and_says_how_to_work_offline(capsys, monkeypatch):
    import persona_gate.models.loading as loading

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert loading.hub_problem() is not None and "127.0.0.1:9" in loading.hub_problem()
    monkeypatch.setattr(loading, "_cached_snapshot", lambda repo, revision: None)
    _one_line_error(
        capsys,
        ["directions", "--model", "someorg/some-chat-model", "--n", "4"],
        r"cannot reach the Hugging Face hub \(127\.0\.0\.1:9: .*not in the local cache; (check the name for a typo"
        r"|did you mean .*, which is cached\?)\. To work offline.*'organism'.*\(hf download someorg/some-chat-model\)",
    )


def test_offline_hub_name_loads_from_the_cache(tiny_model_dirs, monkeypatch):
    import persona_gate.models.loading as loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = []
    monkeypatch.setattr(
        loading, "_cached_snapshot", lambda repo, revision: seen.append(repo) or str(tiny_model_dirs["qwen2"])
    )
    model = loading.load_chat_model("someorg/tiny-qwen2", device="cpu")
    assert (
        seen == ["someorg/tiny-qwen2"]
        and model.cfg.n_layers == loading.load_chat_model(tiny_model_dirs["qwen2"]).cfg.n_layers
    )


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"persona-gate {__version__}"


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path):
    # Python installs its Ctrl-C handler only if SIGINT is not ignored at start-up; a test runner
    # launched in the background (`cmd &` without job control) passes SIG_IGN down, so reset it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "persona_gate.cli.main", "demo", "--out", str(tmp_path / "run"), "--no-progress"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not (tmp_path / "run" / "config.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the run has started working
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "persona-gate: interrupted; run the same command again to resume"
    assert "Traceback" not in err
