"""Bad input, table-driven: every case raises a *named* persona_gate error whose message says what to do.

Each row: an id, a call (API) or an argv (CLI), the error class, and a pattern the message must
match -- the pattern names the fix, not only the problem. Loading saved folders never unpickles.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import persona_gate as pg
from persona_gate import errors as E
from persona_gate.cli.main import main
from persona_gate.experiments import RefusalScorer, eval_groups, reintroduction, steering_sweep, window_projection
from persona_gate.experiments.patching import activation_patching
from persona_gate.experiments.pipeline import RunConfig, run_pipeline
from persona_gate.io import load_artefact

# Each application registers its folder kinds when imported; the fixtures below claim folders of several.
for _app in ("compare", "export", "guard", "monitoring", "redteam", "screening"):
    importlib.import_module(f"persona_gate.{_app}")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_model_dirs, tiny_models):
    root = tmp_path_factory.mktemp("bad")
    model = pg.load_chat_model("organism")
    pr = pg.fit_persona_and_refusal(model, n_per_group=8, progress=False)
    scorer = RefusalScorer.for_model(model)
    groups = eval_groups(model, 4)
    pr.persona.save(root / "persona")
    sweep = steering_sweep(model, pr.persona, layers=[2], alphas=[0.0], groups=groups, scorer=scorer, progress=False)
    sweep.save(root / "sweep")

    def copy(name: str) -> Path:  # a fresh copy of a saved folder to damage
        dst = root / f"{name}-{len(list(root.iterdir()))}"
        shutil.copytree(root / name, dst)
        return dst

    no_template = root / "no-template"
    shutil.copytree(tiny_model_dirs["qwen2"], no_template)
    tc = json.loads((no_template / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(tc))
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    return dict(
        m=model,
        pr=pr,
        scorer=scorer,
        groups=groups,
        root=root,
        copy=copy,
        tiny=tiny_models["qwen2"],
        no_template=no_template,
        sweep=sweep,
    )


def _truncate(path: Path) -> Path:
    t = path / "tensors.safetensors"
    t.write_bytes(t.read_bytes()[: len(t.read_bytes()) // 2])
    return path


def _edit_manifest(path: Path, **changes) -> Path:
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))
    return path


def _nan_direction(c) -> pg.DirectionSet:
    p = c["pr"].persona
    v = p.vectors.clone()
    v[0, 3] = float("nan")
    return pg.DirectionSet(
        name="x",
        sites=p.sites,
        vectors=v,
        raw_norms=p.raw_norms,
        positive="a",
        negative="b",
        counts={},
        position=p.position,
    )


def _nan_saved_direction(c) -> pg.DirectionSet:
    from safetensors.torch import load_file, save_file

    path = c["copy"]("persona")
    t = load_file(str(path / "tensors.safetensors"))
    t["vectors"][1, 0] = float("nan")
    save_file(t, str(path / "tensors.safetensors"))
    return pg.DirectionSet.load(path)


def _long_prompt(c):
    n_ctx = int(c["m"].cfg.n_ctx)
    return pg.cache_activations(
        c["m"], [pg.ChatPrompt(system=None, user="hello " * (2 * n_ctx), group="g")], [pg.HookSite(1, "resid_pre")]
    )


# (id, call, error class, pattern that names the fix)
API_CASES = [
    # models and loading
    (
        "model path missing",
        lambda c: pg.load_chat_model(c["root"] / "no-such-model"),
        E.ModelNotFoundError,
        r"check|pass|path",
    ),
    ("unknown dtype", lambda c: pg.load_chat_model("organism", dtype="float12"), E.ConfigError, r"use one of float32"),
    (
        "unknown chat template",
        lambda c: pg.load_chat_model("organism", chat_template="nonsense"),
        E.ChatTemplateError,
        r"pass one of chatml",
    ),
    (
        "model without a chat template",
        lambda c: pg.render(
            pg.load_chat_model(c["no_template"]).tokenizer, pg.ChatPrompt(system=None, user="hi", group="g")
        ),
        E.ChatTemplateError,
        r"chat_template=",
    ),
    # prompts and positions
    (
        "empty prompt list",
        lambda c: pg.cache_activations(c["m"], [], [pg.HookSite(1, "resid_pre")]),
        E.EmptyGroupError,
        r"at least one prompt",
    ),
    (
        "batch size zero",
        lambda c: pg.cache_activations(
            c["m"], c["groups"]["safe/harmful"], [pg.HookSite(1, "resid_pre")], batch_size=0
        ),
        E.ConfigError,
        r"pass a positive batch size",
    ),
    (
        "empty user message",
        lambda c: pg.render(c["m"].tokenizer, pg.ChatPrompt(system=None, user=" ", group="g")),
        E.DatasetError,
        r"non-empty request",
    ),
    ("prompt longer than the context", _long_prompt, E.PositionError, r"shorten or drop"),
    ("unknown position span", lambda c: pg.parse_position("mean:bogus"), E.PositionError, r"use one of system"),
    (
        "no system span to average",
        lambda c: pg.cache_activations(
            c["m"],
            [pg.ChatPrompt(system=None, user="hi", group="g")],
            [pg.HookSite(1, "resid_pre")],
            position="mean:system",
        ),
        E.PositionError,
        r"system",
    ),
    ("unknown request kind", lambda c: pg.load_requests("spicy"), E.DatasetError, r"choose one of harmful, harmless"),
    ("unknown trait", lambda c: pg.load_trait("no-such-trait"), E.DatasetError, r"choose one of"),
    (
        "public dataset file missing",
        lambda c: pg.datasets.load_strongreject(c["root"] / "x.csv"),
        E.DatasetError,
        r"pass an existing file",
    ),
    (
        "too few prompts per group",
        lambda c: pg.fit_persona_and_refusal(c["m"], n_per_group=1, progress=False),
        E.EmptyGroupError,
        r"at least 2|Add prompts",
    ),
    # layers, sites, windows
    (
        "layer out of range",
        lambda c: pg.fit_persona_and_refusal(c["m"], layers=[99], progress=False),
        E.LayerOutOfRangeError,
        r"use 0 \.\. 5",
    ),
    ("unknown hook site", lambda c: pg.parse_site("blocks.1.hook_bogus"), E.UnknownHookSiteError, r"use|known|one of"),
    (
        "sweep layer out of range",
        lambda c: steering_sweep(c["m"], c["pr"].persona, layers=[7], groups=c["groups"], progress=False),
        E.LayerOutOfRangeError,
        r"use 0",
    ),
    (
        "window wider than the model",
        lambda c: window_projection(c["m"], c["pr"].persona, width=99, groups=c["groups"], progress=False),
        E.InterventionError,
        r"width <= n_layers",
    ),
    (
        "inverted window",
        lambda c: window_projection(c["m"], c["pr"].persona, windows=[(4, 2)], groups=c["groups"], progress=False),
        E.InterventionError,
        r"start <= end",
    ),
    (
        "no random control",
        lambda c: window_projection(
            c["m"], c["pr"].persona, width=2, random_seeds=0, groups=c["groups"], progress=False
        ),
        E.InterventionError,
        r"random_seeds must be >= 1",
    ),
    (
        "direction missing at a source layer",
        lambda c: (
            pg.Ablate(c["pr"].persona, layers=[2], source_layer=0).hooks(c["m"])
            if 0 not in c["pr"].persona.layers
            else pg.Ablate(c["pr"].persona.random_like(0), layers=[2], source_layer=99).hooks(c["m"])
        ),
        E.UnknownHookSiteError,
        r"use one of those",
    ),
    # directions and interventions
    ("NaN direction", _nan_direction, E.NonFiniteError, r"."),
    (
        "persona and refusal swapped in monitor",
        lambda c: pg.monitor(c["m"], [{"role": "user", "content": "Plan a trip."}], c["pr"].refusal, c["pr"].persona),
        E.ConfigError,
        r"swapped.*in that order",
    ),
    (
        "steering a layer without a direction",
        lambda c: pg.Steer(c["pr"].refusal, alpha=1.0, layers=[0]).hooks(c["m"]),
        E.InterventionError,
        r"raw norm 0.*choose layers",
    ),
    (
        "NaN written into a saved direction",
        _nan_saved_direction,
        E.ArtefactError,
        r"changed after it was saved.*save it again",
    ),
    (
        "direction of another model",
        lambda c: pg.Steer(c["pr"].persona, alpha=1.0, layers=[1]).hooks(c["tiny"]),
        E.DModelMismatchError,
        r".",
    ),
    (
        "activations of another width",
        lambda c: c["pr"].persona.project(torch.zeros(3, 7)),
        E.DModelMismatchError,
        r"project activations of the model",
    ),
    (
        "NaN alpha",
        lambda c: pg.Steer(c["pr"].persona, alpha=float("nan"), layers=[2]),
        E.InterventionError,
        r"pick a value",
    ),
    (
        "empty intervention layers",
        lambda c: pg.Steer(c["pr"].persona, alpha=1.0, layers=[]).hooks(c["m"]),
        E.InterventionError,
        r"pass at least one layer",
    ),
    (
        "unknown steering units",
        lambda c: pg.Steer(c["pr"].persona, alpha=1.0, units="bogus"),
        E.InterventionError,
        r"'raw'.*or 'unit'",
    ),
    (
        "unknown intervention scope",
        lambda c: pg.Ablate(c["pr"].persona, scope="bogus"),
        E.InterventionError,
        r"use one of prompt",
    ),
    (
        "re-introduction in an unknown mode",
        lambda c: reintroduction(
            c["m"], c["pr"].persona, c["pr"].refusal, mode="bogus", groups=c["groups"], progress=False
        ),
        E.InterventionError,
        r"use 'prompt'",
    ),
    # scoring, generation, patching
    (
        "no refusal tokens",
        lambda c: activation_patching(
            c["m"], c["groups"]["safe/harmful"][:1], c["groups"]["compliant/harmful"][:1], [], progress=False
        ),
        E.EmptyGroupError,
        r"RefusalScorer\.for_model",
    ),
    (
        "refusal token outside the vocabulary",
        lambda c: RefusalScorer(c["m"], (10**7,)).score(c["groups"]["safe/harmful"][:1]),
        E.EmptyGroupError,
        r"model's own tokenizer",
    ),
    ("no refusal phrases", lambda c: RefusalScorer.for_model(c["m"], phrases=[]), E.EmptyGroupError, r"pass e\.g\."),
    (
        "unequal patching pairs",
        lambda c: activation_patching(
            c["m"],
            c["groups"]["safe/harmful"][:2],
            c["groups"]["compliant/harmful"][:1],
            c["scorer"].token_ids,
            progress=False,
        ),
        E.PositionError,
        r"as many source as target",
    ),
    (
        "unknown patching positions",
        lambda c: activation_patching(
            c["m"],
            c["groups"]["safe/harmful"][:1],
            c["groups"]["compliant/harmful"][:1],
            c["scorer"].token_ids,
            positions="bogus",
            progress=False,
        ),
        E.PositionError,
        r"use auto, tokens or roles",
    ),
    (
        "negative generation length",
        lambda c: pg.generate(c["m"], c["groups"]["safe/harmful"][:1], max_new_tokens=-1),
        E.ConfigError,
        r"pass a positive",
    ),
    # results, saved folders, figures
    ("result folder missing", lambda c: pg.LabelledResult.load(c["root"] / "nope"), E.ArtefactError, r"check the path"),
    (
        "truncated result",
        lambda c: pg.LabelledResult.load(_truncate(c["copy"]("sweep"))),
        E.ArtefactError,
        r"save the artefact again",
    ),
    (
        "corrupt manifest",
        lambda c: pg.LabelledResult.load(_write(c["copy"]("sweep") / "manifest.json", "{not json").parent),
        E.ArtefactError,
        r"save the artefact again",
    ),
    (
        "manifest without tensors",
        lambda c: pg.LabelledResult.load(_unlink(c["copy"]("sweep"), "tensors.safetensors")),
        E.ArtefactError,
        r"save it again",
    ),
    (
        "newer schema version",
        lambda c: pg.LabelledResult.load(_edit_manifest(c["copy"]("sweep"), schema_version=99)),
        E.SchemaVersionError,
        r"upgrade persona_gate",
    ),
    (
        "wrong kind of folder",
        lambda c: pg.DirectionSet.load(c["root"] / "sweep"),
        E.ArtefactError,
        r"load it with the matching class",
    ),
    (
        "directions loaded for another model",
        lambda c: pg.DirectionSet.load(c["root"] / "persona", model=c["tiny"]),
        E.DModelMismatchError,
        r".",
    ),
    ("select a label that is not there", lambda c: c["sweep"].sel(layer=99), E.SelectionError, r"available labels"),
    ("select a dim that is not there", lambda c: c["sweep"].mean("bogus"), E.SelectionError, r"this result has dims"),
    (
        "result values of the wrong shape",
        lambda c: pg.LabelledResult("x", ("a",), {"a": [1, 2]}, {"v": torch.zeros(3)}),
        E.ResultError,
        r"one entry per label",
    ),
    (
        "report of a folder that is no run",
        lambda c: pg_report(c["root"]),
        E.ArtefactError,
        r"pass a folder written by persona-gate run",
    ),
    (
        "report of one saved result",
        lambda c: pg_report(c["root"] / "sweep"),
        E.ArtefactError,
        r"draw it with persona_gate\.plots\.figure_for",
    ),
    (
        "report over a file the user wrote",
        lambda c: pg_report_to(c["root"], _write(c["root"] / "notes.txt", "mine")),
        E.OutputExistsError,
        r"not a persona_gate report.*Choose another --out",
    ),
    # output folders: checked before any work, never overwritten by another kind
    (
        "save a result over another kind",
        lambda c: c["sweep"].save(c["root"] / "persona"),
        E.OutputExistsError,
        r"choose another path",
    ),
    (
        "save directions over files of the user",
        lambda c: c["pr"].persona.save(_write(c["root"] / "mine" / "a.txt", "x").parent),
        E.OutputExistsError,
        r"files persona_gate did not write \(a\.txt\)",
    ),
    (
        "run into a file",
        lambda c: run_pipeline(RunConfig(), _write(c["root"] / "afile", "x"), progress=False),
        E.OutputExistsError,
        r"is a file",
    ),
    (
        "run into a saved result",
        lambda c: run_pipeline(RunConfig(), c["root"] / "persona", progress=False),
        E.OutputExistsError,
        r"holds one saved 'direction_set' result.*Choose a new or empty --out",
    ),
    (
        "run under a file (unwritable)",
        lambda c: run_pipeline(RunConfig(), _write(c["root"] / "bfile", "x") / "sub", progress=False),
        E.OutputNotWritableError,
        r"choose a folder you can write to",
    ),
    # chat templates and spans
    (
        "a sweep without alphas",
        lambda c: steering_sweep(
            c["m"], c["pr"].persona, layers=[2], alphas=(), groups=c["groups"], scorer=c["scorer"], progress=False
        ),
        E.InterventionError,
        r"pass e\.g\. \(0\.0, 2\.0, 4\.0\)",
    ),
    (
        "whitespace-only system prompt",
        lambda c: pg.render(c["m"].tokenizer, pg.ChatPrompt(system=" \n", user="hi", group="g")),
        E.DatasetError,
        r"system=None for a prompt without",
    ),
    # run configs and resuming
    ("config with unknown keys", lambda c: RunConfig.from_dict({"n_evals": 8}), E.ConfigError, r"known keys are"),
    (
        "config file not TOML",
        lambda c: RunConfig.from_toml(_write(c["root"] / "bad.toml", "n_eval = = 3")),
        E.ConfigError,
        r"fix the syntax",
    ),
    ("config file missing", lambda c: RunConfig.from_toml(c["root"] / "none.toml"), E.ConfigError, r"check the path"),
    (
        "unknown public dataset in a config",
        lambda c: run_pipeline(RunConfig(harmful_dataset="bogus"), c["root"] / "run-bogus", progress=False),
        E.ConfigError,
        r"'harmful_dataset' must be one of \['advbench'",
    ),
    (
        "resume a run under another config",
        lambda c: run_pipeline(
            RunConfig(n_eval=4),
            _write(c["root"] / "run-x" / "config.json", json.dumps({**RunConfig().__dict__, "n_eval": 5})).parent,
            progress=False,
        ),
        E.ConfigError,
        r"use a new --out",
    ),
    (
        "resume a sweep checkpoint of another sweep",
        lambda c: _two_sweeps(c),
        E.ResumeMismatchError,
        r"fresh checkpoint folder",
    ),
]


def pg_report(path):
    from persona_gate.plots.report import write_report

    return write_report(path)


def pg_report_to(path, out):
    from persona_gate.plots.report import write_report

    return write_report(path, out)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _unlink(path: Path, name: str) -> Path:
    (path / name).unlink()
    return path


def _two_sweeps(c):
    ck = c["root"] / "ck-two"
    kw = dict(layers=[2], groups=c["groups"], scorer=c["scorer"], progress=False, checkpoint=ck)
    steering_sweep(c["m"], c["pr"].persona, alphas=[0.0], **kw)
    steering_sweep(c["m"], c["pr"].persona, alphas=[1.0], **kw)


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_a_named_error_that_says_what_to_do(ctx, case):
    _, call, error, fix = case
    with pytest.raises(error, match=fix) as info:
        call(ctx)
    assert isinstance(info.value, E.PersonaGateError)
    assert len(str(info.value)) > 20


def _cli_cases(root: Path) -> list:
    bad_keys = _write(root / "cli" / "bad_keys.toml", "n_evals = 8\n")
    chat = _write(root / "cli" / "chat.jsonl", '{"role": "user", "content": "hello"}\n')
    bad_chat = _write(root / "cli" / "bad_chat.jsonl", "{not json\n")
    return [
        (
            "cli: unknown config keys",
            ["run", "--config", str(bad_keys), "--out", str(root / "cli-a")],
            r"unknown keys \['n_evals'\]",
        ),
        ("cli: missing model", ["directions", "--model", str(root / "nope")], r"error: .*(check|pass)"),
        ("cli: layer out of range", ["directions", "--layers", "99", "--n", "4"], r"use 0 \.\. 5"),
        ("cli: unknown dtype", ["directions", "--dtype", "float12"], r"use one of float32"),
        ("cli: report of a folder that is no run", ["report", str(root)], r"pass a folder written by persona-gate run"),
        (
            "cli: missing config file",
            ["run", "--config", str(root / "none.toml"), "--out", str(root / "cli-c")],
            r"check the path",
        ),
        (
            "cli: calibration settings with a saved calibration",
            ["monitor", str(chat), "--calibration", str(root / "cal"), "--n-train", "8"],
            r"--n-train set how a calibration is made.*drop those options or drop --calibration",
        ),
        (
            "cli: a conversation file that is not JSONL",
            ["monitor", str(bad_chat)],
            r"bad_chat.jsonl:1 is not valid JSON.*one JSON object per line",
        ),
        (
            "cli: a negative number of prompts",
            ["directions", "--n", "-3"],
            r"n_per_group must be a positive number.*pass e\.g\. 32",
        ),
        (
            "cli: an empty --out",
            ["directions", "--n", "4", "--out", ""],
            r"the output folder is empty text; give --out a folder path",
        ),
        ("cli: an empty --model", ["directions", "--model", ""], r"the model name is empty; pass 'organism'"),
        (
            "cli: --out under a file",
            ["directions", "--n", "4", "--out", str(_write(root / "cli" / "f", "x") / "sub")],
            r"cannot write to .*choose a folder you can write to",
        ),
    ]


@pytest.mark.parametrize("i", range(12))
def test_cli_bad_input_exits_2_with_one_line_that_says_what_to_do(ctx, i, capsys):
    name, argv, fix = _cli_cases(ctx["root"])[i]
    assert main([*argv, "--no-progress"] if argv[0] in ("run", "directions", "monitor") else argv) == 2, name
    err = capsys.readouterr().err.strip()
    assert err.startswith("persona-gate: error:") and len(err.splitlines()) == 1, err
    assert __import__("re").search(fix, err), (name, err)


# Wrong *types* are caught by jaxtyping/beartype when the suite runs (pytest instruments the package),
# so what a user meets -- the named error -- is checked in a plain interpreter, one process for all.
WRONG_TYPES = [
    ("position of the wrong type", "pg.parse_position(3)", "PositionError", r"'last' or 'mean:system'"),
    (
        "layer of the wrong type",
        "pg.fit_persona_and_refusal(m, layers=['3'], progress=False)",
        "LayerOutOfRangeError",
        r"must be an int",
    ),
    ("non-numeric alpha", "pg.Steer(d, alpha='big', layers=[2])", "InterventionError", r"pass e\.g\. alpha=4\.0"),
    ("figure of a non-result", "figure_for(42)", "PlotError", r"pass what an experiment returned"),
    (
        "config value of the wrong type",
        "RunConfig.from_dict({'n_eval': 'many'})",
        "ConfigError",
        r"fix it in the config file",
    ),
    (
        "config alphas as a string",
        "RunConfig.from_dict({'alphas': '0,4'})",
        "ConfigError",
        r"such as \[0\.0, 2\.0, 4\.0\]",
    ),
    ("config layers as a number", "RunConfig.from_dict({'layers': 3})", "ConfigError", r"such as \[4, 8, 12\]"),
    # public functions take `model: ChatModel`; under pytest the instrumentation rejects these first
    (
        "a model name where a model is needed",
        "steering_sweep('organism', d)",
        "NotAModelError",
        r"load_chat_model\('organism'\)",
    ),
    (
        "a tokenizer where a model is needed",
        "pg.fit_persona_and_refusal(m.tokenizer)",
        "NotAModelError",
        r"load_chat_model",
    ),
    (
        "prompt sets of the wrong type in a profile",
        "pg.ModelProfile(name='x', prompt_sets=object())",
        "ConfigError",
        r"persona_gate\.prompts\.OPEN_SETS",
    ),
    (
        "apply() on a plain Hugging Face model",
        "pg.apply(m.original_model, pg.Steer(d, alpha=1.0, layers=[2])).__enter__()",
        "NotAModelError",
        r"load_chat_model",
    ),
    (
        "a prompt, not a list of prompts",
        "pg.generate(m, eval_groups(m, 2)['safe/harmful'][0], max_new_tokens=2)",
        "PositionError",
        r"wrap it",
    ),
    ("render something that is no prompt", "pg.render(m.tokenizer, 42)", "DatasetError", r"build one with ChatPrompt"),
    (
        "cli: config value of the wrong type",
        "main(['run', '--config', BAD_TYPE, '--out', OUT, '--no-progress'])",
        "exit 2",
        r"fix it in the config file",
    ),
]

_WRONG_TYPES_SCRIPT = """
import json, sys, contextlib, io
import persona_gate as pg
from persona_gate.cli.main import main
from persona_gate.experiments import eval_groups, steering_sweep
from persona_gate.experiments.pipeline import RunConfig
from persona_gate.plots import figure_for
BAD_TYPE, OUT = sys.argv[1], sys.argv[2]
m = pg.load_chat_model("organism")
d = pg.DirectionSet.load(sys.argv[3])
for name, code in json.loads(sys.stdin.read()):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = eval(code)
        print(json.dumps([name, "exit %s" % rc if isinstance(rc, int) else "no error", err.getvalue().strip(), True]))
    except Exception as e:
        print(json.dumps([name, type(e).__name__, str(e), isinstance(e, pg.errors.PersonaGateError)]))
"""


@pytest.fixture(scope="module")
def wrong_type_outcomes(ctx):
    import subprocess
    import sys

    bad_type = _write(ctx["root"] / "cli" / "bad_type.toml", 'n_eval = "many"\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _WRONG_TYPES_SCRIPT,
            str(bad_type),
            str(ctx["root"] / "cli-b"),
            str(ctx["root"] / "persona"),
        ],
        input=json.dumps([[n, code] for n, code, *_ in WRONG_TYPES]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("[")]
    assert len(lines) == len(WRONG_TYPES), proc.stderr[-2000:]
    return {name: (kind, msg, named) for name, kind, msg, named in lines}


@pytest.mark.parametrize("case", WRONG_TYPES, ids=[c[0] for c in WRONG_TYPES])
def test_wrong_types_raise_named_errors_outside_the_test_instrumentation(wrong_type_outcomes, case):
    import re

    name, _, error, fix = case
    kind, msg, named = wrong_type_outcomes[name]
    assert (kind, named) == (error, True), msg
    assert re.search(fix, msg), msg


@pytest.mark.parametrize("layers", ["a,b", ",", "1,,2", "3,"])
def test_cli_malformed_option_is_an_argparse_error(capsys, layers):
    with pytest.raises(SystemExit) as info:
        main(["directions", "--layers", layers])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "comma-separated integers" in err[0], err


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["directions", "--seed", "abc"],
            r"^persona-gate: error: argument --seed: invalid int value: 'abc' \(see `persona-gate directions --help`\)$",
        ),
        (["directions", "--bogus"], r"^persona-gate: error: unrecognized arguments: --bogus"),
        (["nonsense"], r"^persona-gate: error: argument command: invalid choice: 'nonsense'"),
    ],
)
def test_usage_errors_are_one_line_too(capsys, argv, says):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and __import__("re").search(says, err[0]), err


def test_a_closed_pipe_is_not_an_error(tmp_path):
    """`persona-gate ... | head -1`: the reader leaves early; exit 0 and no error message."""
    import subprocess
    import sys

    proc = subprocess.run(
        f"{sys.executable} -m persona_gate.cli.main directions --n 4 --no-progress | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and proc.stdout.strip() and "error" not in proc.stderr, proc.stderr[-1000:]


def test_the_table_covers_at_least_thirty_inputs():
    assert len(API_CASES) + len(WRONG_TYPES) + len(_cli_cases(Path("/tmp/unused"))) >= 30


def test_loading_saved_folders_never_unpickles(ctx, monkeypatch):
    """safetensors + JSON only: loading works with every unpickling route disabled."""

    def refuse(*a, **k):
        raise AssertionError("a persona_gate loader tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    d = pg.DirectionSet.load(ctx["root"] / "persona")
    assert torch.equal(d.vectors, ctx["pr"].persona.vectors)
    assert pg.LabelledResult.load(ctx["root"] / "sweep") == ctx["sweep"]
    for folder in (ctx["root"] / "persona", ctx["root"] / "sweep"):
        assert {p.name for p in folder.iterdir()} == {"manifest.json", "tensors.safetensors"}
    src = Path(pg.__file__).parent
    offenders = [p.name for p in src.rglob("*.py") if "torch.load(" in p.read_text() or "pickle.load" in p.read_text()]
    assert not offenders, f"modules that unpickle: {offenders}"
    manifest, _ = load_artefact(ctx["root"] / "sweep", "labelled_result")
    assert manifest["kind"] == "labelled_result"


# ------------------------------------------------- no command overwrites a folder of another kind

FOLDER_COMMANDS = {
    "run": ["run", "--out", "{out}", "--no-progress"],
    "directions": ["directions", "--out", "{out}", "--n", "4", "--no-progress"],
    "redteam": ["redteam", "--out", "{out}", "--no-progress"],
    "monitor": ["monitor", "{chat}", "--out", "{out}", "--no-progress"],
    "comparison": ["compare", "--model-b", "organism", "--out", "{out}", "--no-progress"],
    "organism": ["organism", "train", "--out", "{out}", "--no-progress"],
}


@pytest.fixture(scope="module")
def occupied(tmp_path_factory):
    """A folder of every kind (marked, with a payload), a run written before marks, a user's folder, a file."""
    from persona_gate.io import claim_folder

    root = tmp_path_factory.mktemp("occupied")
    targets = {}
    for kind in FOLDER_COMMANDS:
        folder = claim_folder(root / kind, kind)
        (folder / "payload.bin").write_bytes(os.urandom(64))
        targets[kind] = folder
    legacy = root / "legacy-run"  # what `persona-gate run` wrote before folders were marked
    _write(legacy / "config.json", json.dumps(RunConfig().__dict__, default=list))
    _write(
        legacy / "summary.json",
        json.dumps({"n_prompts_per_group": {"fit": 8, "eval": 4}, "baseline_refusal_rate": 1.0}),
    )
    targets["legacy-run"] = legacy
    targets["user"] = _write(root / "user" / "notes.txt", "my own notes").parent
    targets["file"] = _write(root / "a-file", "not a folder")
    chat = _write(root / "chat.jsonl", '{"role": "user", "content": "hello"}\n')
    return targets, chat


def _snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", list(FOLDER_COMMANDS))
def test_no_command_overwrites_a_folder_of_another_kind(occupied, command, capsys, monkeypatch):
    import persona_gate.compare.checkpoints as checkpoints
    import persona_gate.models.loading as loading
    import persona_gate.organism.train as train

    def no_work(*a, **k):
        raise AssertionError("work started before the output folder was checked")

    # The folder check comes first: loading a model or training would fail this test loudly.
    monkeypatch.setattr(loading, "load_chat_model", no_work)
    monkeypatch.setattr(checkpoints, "compare_checkpoints", no_work)
    monkeypatch.setattr(train, "build", no_work)
    targets, chat = occupied
    for name, target in targets.items():
        if name == command or (command == "run" and name == "legacy-run"):
            continue
        before = _snapshot(target)
        argv = [a.format(out=target, chat=chat) for a in FOLDER_COMMANDS[command]]
        assert main(argv) == 2, (command, name)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("persona-gate: error:"), (command, name, err)
        assert ("is a file" if name == "file" else "holds") in err[0] and "--out" in err[0], err[0]
        assert _snapshot(target) == before, (command, name)


def test_a_command_resumes_into_its_own_kind_and_marks_new_folders(occupied, tmp_path):
    from persona_gate.io import FOLDER_MARK, claim_folder, folder_kind

    targets, _ = occupied
    assert folder_kind(targets["legacy-run"]) == "run"  # recognised by its files
    assert claim_folder(targets["directions"], "directions") == targets["directions"]
    fresh = claim_folder(tmp_path / "a" / "b", "monitor")
    assert json.loads((fresh / FOLDER_MARK).read_text())["kind"] == "monitor" and folder_kind(fresh) == "monitor"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert folder_kind(claim_folder(empty, "redteam")) == "redteam"
