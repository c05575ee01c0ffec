"""The README is a test: every Python block and every command line in it runs, top to bottom.

The blocks run in document order in one temporary folder (outputs such as ``runs/`` land there)
and one Python namespace, as a reader pasting them into a notebook and a terminal would. Command
lines run through ``persona_gate.cli.main`` in this process (``python ...`` lines in a
subprocess). The outputs the README shows (the demo's summary, the monitor's table) must be what
the commands print, and the numbers it states come from saved outputs
(``benchmarks/readme.py``), never from hand-copied tables.

What cannot run here is changed as little as possible, in one table (:data:`SUBSTITUTE`):

* a hub model (no network here) -> the bundled organism, with the line's other options kept;
* the public datasets' folder -> ``../shared/data`` beside the repository (the block is skipped
  where it is absent);
* the gemma3-270m-chat paper run -> a handful of prompts (``tests/readme_gemma3-270m-chat.toml``);
* ``organism train`` -> fewer steps, ``benchmarks/run_all.py`` -> ``--quick`` into the temporary
  folder (the full versions take 4 and 20 minutes); ``screen --validate`` -> 4 steps, one seed,
  48 examples per dataset; ``guard`` -> two percentiles and 16 requests (2.5 and 1 minute);
* ``torchrun`` lines run two processes on CPU, ``accelerate launch`` lines one (``--cpu``); a
  ``sh`` job script (SLURM) must be a ``paper/*.sh`` file of the repository and valid bash;
* installing (``python3 -m venv``, ``pip install``) and ``.venv/bin/pytest`` are what CI's
  ``.ci/run`` executes; this module checks that the README's commands are the ones it runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SHARED_DATA = REPO.parent / "shared" / "data"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# README text -> what runs here instead (see the module docstring).
SUBSTITUTE = {
    "Qwen/Qwen2.5-7B-Instruct": "organism",
    'Path("../shared/data")': f"Path({str(SHARED_DATA)!r})",
    "../shared/data/": f"{SHARED_DATA}/",
    "paper/gemma3-270m-chat.toml": str(REPO / "tests" / "readme_gemma3-270m-chat.toml"),  # minutes -> about one
    "paper/qwen2.5-7b-instruct.toml": str(REPO / "tests" / "readme_many.toml"),  # a hub model -> a small organism run
}
# Launchers of many processes: torchrun runs two processes on CPU (gloo); accelerate launch, which
# starts GPU processes, runs one on CPU (--cpu).
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run"],
    "accelerate": [str(Path(sys.executable).with_name("accelerate"))],
}
EXTRA_ARGS = {  # a command's first words -> options appended here (the longest match wins)
    ("organism", "train"): ["--steps", "30"],
    ("organism", "train", "--base"): ["--steps", "2"],
    ("organism", "card", "--model"): ["--n", "2", "--public-n", "2"],
    ("benchmarks/run_all.py",): ["--quick", "--out", "bench/BENCHMARKS.md"],
    ("screen", "--validate"): ["--steps", "4", "--seeds", "0", "--n-examples", "48"],
    ("guard",): ["--percentiles", "50,99", "--n", "16"],
}
# ... and what it must then do instead of exit 0: a short training saves and scores a model whose
# behaviour card misses its targets, which the command reports with exit status 1.
EXPECT = {
    ("organism", "train"): (1, "behaviour card MISSES targets"),
    ("organism", "train", "--base"): (0, "chat model adapter written to"),
    ("organism", "card", "--model"): (1, "MISSES targets"),
}


def _script_lines(text: str) -> list[str]:
    """A job script's lines without blank lines and plain comments (#SBATCH directives count)."""
    return [ln for ln in text.splitlines() if ln.strip() and (not ln.startswith("#") or ln.startswith("#SBATCH"))]


def _on_cpu(argv: list[str]) -> list[str]:
    """A launcher line as this 2-core machine runs it: two torchrun processes on a free port, one accelerate process."""
    import socket

    out = list(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    flag, n, port_flag = (
        ("--nproc_per_node", "2", "--master_port")
        if argv[0] == "torchrun"
        else ("--num_processes", "1", "--main_process_port")
    )
    if flag in out:
        out[out.index(flag) + 1] = n
    at = 1 if argv[0] == "torchrun" else 2  # after `accelerate launch`
    out[at:at] = [port_flag, port] + (
        []
        if argv[0] == "torchrun"
        else ["--cpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    )
    return out


def _longest(table: dict, argv: list[str], default):
    keys = [k for k in table if tuple(argv[1 : 1 + len(k)]) == k]
    return table[max(keys, key=len)] if keys else default


INSTALL = ("python3 -m venv", ".venv/bin/pip install")
_FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```\s*$", re.M | re.S)


@dataclass
class Step:
    kind: str  # python | cli | install | output | config | layout
    where: str  # README.md:<line>
    text: str
    ok: bool = True
    detail: str = ""
    stdout: str = ""
    seconds: float = 0.0


def readme_blocks(text: str | None = None) -> list[tuple[str, str, int]]:
    text = README.read_text(encoding="utf-8") if text is None else text
    return [(m["lang"], m["body"], text[: m.start()].count("\n") + 1) for m in _FENCE.finditer(text)]


def _substitute(text: str) -> str:
    for a, b in SUBSTITUTE.items():
        text = text.replace(a, b)
    return text


def _commands(block: str) -> list[str]:
    out = []
    for line in block.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out += [c.strip() for c in line.split("&&")]
    return out


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    from persona_gate.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _layout_problems(block: str) -> list[str]:
    """Every file and folder the layout tree names exists."""
    missing = []
    for line in block.splitlines():
        indented = line.startswith("  ")
        head = line.strip().split("  ")[0]
        names = [n for n in head.split() if n.endswith(("/", ".py"))]
        if not indented and line[:1].strip():
            names = names[:1]
        for name in names:
            path = (REPO / "persona_gate" / name) if indented else REPO / name
            if not path.exists():
                missing.append(str(path.relative_to(REPO)))
    return missing


def _execute(tmp: Path) -> list[Step]:
    steps: list[Step] = []
    ns: dict = {"__name__": "__readme__"}
    last_stdout: dict[str, str] = {}
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    blocks = readme_blocks()
    configs = [body for lang, body, _ in blocks if lang == "toml"]
    if configs:  # the README's ```toml block is the run.toml its commands use (shown right after them)
        (tmp / "run.toml").write_text(configs[-1], encoding="utf-8")
    for lang, body, line in blocks:
        where = f"README.md:{line}"
        started, before = time.perf_counter(), len(steps)
        if lang == "python":
            step = Step("python", where, body)
            steps.append(step)
            if "../shared/data" in body and not SHARED_DATA.is_dir():
                step.detail = "skipped: no public datasets beside the repository"
                continue
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(compile(_substitute(body), where, "exec"), ns)
            except Exception:
                step.ok, step.detail = False, traceback.format_exc(limit=-3)
            step.stdout = out.getvalue()
        elif lang == "bash":
            for command in _commands(body):
                step = Step("cli", where, command)
                steps.append(step)
                if command.startswith(INSTALL) or command == ".venv/bin/pytest":
                    step.kind = "install"
                    pin = re.search(r"torch==[\d.]+", command)
                    # CI installs from a clean clone: the README's commands must be the ones it runs.
                    step.ok = (pin is None or pin.group(0) in ci) and command.split()[0] in ci
                    step.ok = step.ok and (command != ".venv/bin/pytest" or ".venv/bin/pytest" in ci)
                    step.detail = "" if step.ok else f"{command!r} is not what .ci/run executes"
                    continue
                if "../shared/data" in command and not SHARED_DATA.is_dir():
                    step.detail = "skipped: no public datasets beside the repository"
                    continue
                argv = shlex.split(_substitute(command), comments=True)
                argv += _longest(EXTRA_ARGS, argv, [])
                try:
                    if Path(argv[0]).name == "persona-gate":
                        rc, out, err = _run_cli(argv[1:])
                        last_stdout[argv[1]] = out
                    elif argv[0] in ("python", "python3"):
                        proc = subprocess.run(
                            [sys.executable, *argv[1:]], cwd=tmp, capture_output=True, text=True, timeout=1800
                        )
                        rc, out, err = proc.returncode, proc.stdout, proc.stderr
                    elif argv[0] in LAUNCHERS:
                        proc = subprocess.run(
                            [*LAUNCHERS[argv[0]], *_on_cpu(argv)[1:]],
                            cwd=tmp,
                            capture_output=True,
                            text=True,
                            timeout=1800,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                        )
                        rc, out, err = proc.returncode, proc.stdout, proc.stderr
                    else:
                        rc, out, err = 127, "", f"the README test does not know how to run {argv[0]!r}; teach it"
                except Exception:
                    rc, out, err = 1, "", traceback.format_exc(limit=-3)
                want_rc, want_text = _longest(EXPECT, argv, (0, ""))
                step.ok, step.stdout = rc == want_rc and want_text in out, out
                step.detail = "" if step.ok else f"exit {rc} (want {want_rc}): {out[-1000:]}{err[-2000:]}"
        elif lang == "toml":
            steps.append(
                Step(
                    "config",
                    where,
                    body,
                    len(configs) == 1,
                    "" if len(configs) == 1 else "one ```toml block (run.toml) expected",
                )
            )
        elif lang == "":
            step = Step("output", where, body)
            steps.append(step)
            first = body.splitlines()[0] if body.strip() else ""
            if first.startswith("persona_gate/"):
                step.kind = "layout"
                missing = _layout_problems(body)
                step.ok, step.detail = not missing, f"the layout names missing paths: {missing}" if missing else ""
                continue
            source = {"model organism": "demo", "calibration:": "monitor"}
            command = next((c for prefix, c in source.items() if first.startswith(prefix)), None)
            if command is None:
                step.ok, step.detail = (
                    False,
                    "an output block the README test cannot check; say which command prints it",
                )
                continue
            printed = [ln.rstrip() for ln in last_stdout.get(command, "").splitlines()]
            missing = [ln for ln in body.splitlines() if ln.strip() and ln.rstrip() not in printed]
            step.ok = not missing
            step.detail = (
                "" if step.ok else f"`persona-gate {command}` printed\n{last_stdout.get(command, '')}\nnot: {missing}"
            )
        elif lang == "sh":  # a job script (SLURM): shown as the repository holds it, and valid bash
            step = Step("script", where, body)
            steps.append(step)
            shown = _script_lines(body)
            match = [
                f for f in sorted(REPO.glob("paper/*.sh")) if _script_lines(f.read_text(encoding="utf-8")) == shown
            ]
            syntax = match and subprocess.run(["bash", "-n", str(match[0])], capture_output=True).returncode == 0
            step.ok = bool(syntax)
            step.detail = "" if step.ok else "no paper/*.sh holds this script (or it is not valid bash)"
        else:
            steps.append(Step("output", where, body, False, f"a ```{lang} block the README test cannot run"))
        for step in steps[before:]:
            step.seconds = (time.perf_counter() - started) / max(1, len(steps) - before)
    if os.environ.get("PERSONA_GATE_README_TIMES"):
        for step in sorted(steps, key=lambda s: -s.seconds)[:12]:
            print(f"{step.seconds:7.1f} s  {step.where}  {step.text.strip().splitlines()[0][:90]}", file=sys.__stderr__)
    return steps


@pytest.fixture(scope="module")
def readme_steps(tmp_path_factory, gemma):
    import plotly.basedatatypes

    import persona_gate.models.loading as loading

    tmp = tmp_path_factory.mktemp("readme")
    for name in ("paper", "benchmarks"):  # scripts the README runs by relative path
        (tmp / name).symlink_to(REPO / name)
    real_load = loading.load_chat_model

    def load(name_or_path="organism", **kw):  # the packaged Gemma is loaded once per session (conftest)
        if (
            name_or_path == "gemma3-270m-gguf"
            and kw.get("dtype", "float32") == "float32"
            and kw.get("device") in (None, "cpu")
        ):
            return gemma
        return real_load(name_or_path, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setattr(loading, "load_chat_model", load)
        mp.setattr(plotly.basedatatypes.BaseFigure, "show", lambda self, *a, **k: None)  # no browser here
        mp.setenv("HF_HUB_OFFLINE", "1")
        steps = _execute(tmp)
    return steps


def _failures(steps: list[Step], *kinds: str) -> str:
    bad = [s for s in steps if s.kind in kinds and not s.ok]
    return "\n\n".join(f"{s.where}: {s.text.strip()[:200]}\n{s.detail}" for s in bad)


def test_every_python_block_runs(readme_steps):
    assert [s for s in readme_steps if s.kind == "python"]
    assert not _failures(readme_steps, "python"), _failures(readme_steps, "python")


def test_every_command_line_runs(readme_steps):
    assert [s for s in readme_steps if s.kind == "cli"]
    assert not _failures(readme_steps, "cli", "install", "config"), _failures(readme_steps, "cli", "install", "config")


def test_outputs_the_readme_shows_are_what_the_commands_print(readme_steps):
    assert {s.text.splitlines()[0][:14] for s in readme_steps if s.kind == "output"} >= {
        "model organism",
        "calibration: f",
    }
    assert not _failures(readme_steps, "output", "layout"), _failures(readme_steps, "output", "layout")


def _readme_module():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import readme
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return readme


def test_numbers_the_readme_states_come_from_the_saved_outputs():
    readme = _readme_module()
    text = README.read_text(encoding="utf-8")
    held, want = readme.passages(text), readme.rendered()
    assert set(held) == set(readme.SOURCES), f"README passages {sorted(held)} vs generators {sorted(readme.SOURCES)}"
    for name in want:
        assert held[name] == want[name], (
            f"README's {name} differs from its saved output; run python benchmarks/readme.py"
        )


def test_benchmarks_md_is_rendered_from_results_json(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    import json

    run_all.write_markdown(json.loads((REPO / "benchmarks" / "results.json").read_text()), tmp_path / "B.md")
    assert (tmp_path / "B.md").read_text() == (REPO / "BENCHMARKS.md").read_text()


def test_a_broken_snippet_fails_the_readme_test(tmp_path, monkeypatch):
    """The harness can fail: an undefined name, a bad CLI line and a wrong output are all caught."""
    bad = "\n".join(
        [
            "```python",
            "print(prompts)",
            "```",
            "```bash",
            "persona-gate directions --layers 8,12,16",
            "```",
            "```bash",
            "persona-gate directions --layers 1 --n 4",
            "```",
            "```",
            "model organism (7 layers)",
            "```",
        ]
    )
    monkeypatch.setattr(sys.modules[__name__], "README", tmp_path / "README.md")
    (tmp_path / "README.md").write_text(bad)
    monkeypatch.chdir(tmp_path)
    steps = _execute(tmp_path)
    assert [s.ok for s in steps] == [False, False, True, False]
    assert "NameError" in steps[0].detail and "exit 2" in steps[1].detail
