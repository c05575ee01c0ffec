"""Fuzzed input: whatever a user feeds in, the answer is a named error that says what to do, never a traceback.

Property tests (hypothesis) over the five ways input reaches persona_gate:

* run configs (:meth:`RunConfig.from_dict` / :meth:`RunConfig.from_toml`): keys missing, of a
  wrong type, out of range, unknown (a close misspelling gets a "did you mean");
* command lines (:func:`persona_gate.cli.main.main`): random flags and values for every command,
  with the model loader replaced so that no model work happens: exit 0 or 2 with one line on
  stderr, and a failed command leaves no ``--out`` folder behind;
* JSONL chat files for ``screen`` (:func:`read_chat_jsonl`) and conversation files for
  ``monitor`` (:meth:`Conversation.load_jsonl`);
* saved folders (:class:`LabelledResult`, :class:`DirectionSet`) with files removed, truncated
  or altered.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import string
import tempfile
import uuid
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from persona_gate.errors import ArtefactError, ConfigError, ConversationError, DatasetError, PersonaGateError
from persona_gate.experiments.pipeline import RunConfig

FUZZ = settings(
    max_examples=int(os.environ.get("PERSONA_GATE_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# ---- JSON-ish values of every type --------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)

# ---- run configs --------------------------------------------------------------------------------

KEYS = [f.name for f in RunConfig.__dataclass_fields__.values()]


def _from_dict(raw: dict):
    """:meth:`RunConfig.from_dict` as a user meets it: where the tests' type-checking instrumentation
    (jaxtyping + beartype) stops a wrong type at ``__init__``, the config's own checks run instead."""
    from jaxtyping import TypeCheckError

    try:
        return RunConfig.from_dict(raw)
    except TypeCheckError:
        cfg = object.__new__(RunConfig)
        for f in RunConfig.__dataclass_fields__.values():
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            object.__setattr__(cfg, f.name, raw.get(f.name, default))
        cfg.__post_init__()
        return cfg


BAD_VALUES = {  # per key: values of a wrong type or out of range
    "n_fit": [1, 0, -3, 2.5, "8", True, None],
    "n_eval": [1, 0, -1, 3.0, "32", False],
    "layers": [[], [-1], [1.5], "1,2", [True], 3, [None]],
    "alphas": [[], [float("nan")], [float("inf")], "0,1", [True], 2.0, [None]],
    "alpha_back": [float("nan"), "1", True, None, [1.0]],
    "window_width": [0, -2, 1.5, "3", True],
    "random_seeds": [0, -1, 1.5, None],
    "patch_examples": [0, "8", None],
    "seed": [-1, 0.5, "0", None],
    "model": ["", 3, None, ["organism"]],
    "dtype": ["", 16, None],
    "device": [0, ["cpu"], True],
    "extraction_sites": [1, "yes", None],
    "refusal_phrases": [[], [""], "I cannot", [3], {}],
}


@FUZZ
@given(
    present=st.sets(st.sampled_from(KEYS)),
    key=st.sampled_from(sorted(BAD_VALUES)),
    data=st.data(),
)
def test_a_config_with_a_bad_value_is_a_config_error_naming_the_key(present, key, data):
    raw = {k: getattr(RunConfig(), k) for k in present}  # any subset of keys may be missing
    raw[key] = data.draw(st.sampled_from(BAD_VALUES[key]))
    with pytest.raises(ConfigError, match=f"config key '{key}'.*fix it in the config file"):
        _from_dict(raw)


@FUZZ
@given(raw=st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6))
def test_any_values_build_a_config_or_raise_a_config_error(raw):
    try:
        cfg = _from_dict(raw)
    except ConfigError as e:
        assert "config key" in str(e) and str(e).endswith(".")
    else:
        assert isinstance(cfg, RunConfig)


def _misspell(key: str, how: int) -> str:
    """One edit of ``key``: drop, double or swap a character (never the key itself)."""
    i = how % len(key)
    edits = [key[:i] + key[i + 1 :], key[:i] + key[i] + key[i:], key[:i] + key[i + 1 : i + 2] + key[i] + key[i + 2 :]]
    return next(e for e in edits[how % 3 :] + edits if e != key)


@FUZZ
@given(key=st.sampled_from([k for k in KEYS if len(k) >= 5]), how=st.integers(0, 100))
def test_a_misspelt_key_gets_a_did_you_mean(key, how):
    typo = _misspell(key, how)
    assume(typo not in KEYS)
    with pytest.raises(ConfigError, match="did you mean") as e:
        RunConfig.from_dict({typo: 1})
    assert f"unknown keys [{typo!r}]" in str(e.value) and "known keys are" in str(e.value)


def test_did_you_mean_n_eval():
    with pytest.raises(ConfigError, match=r"did you mean 'n_eval' for 'n_evl'\?"):
        RunConfig.from_dict({"n_evl": 8})


@FUZZ
@given(keys=st.lists(st.text(string.ascii_letters + "_", min_size=1, max_size=12), min_size=1))
def test_unknown_keys_of_any_name_are_one_config_error(keys):
    assume(not set(keys) & set(KEYS))
    with pytest.raises(ConfigError, match="unknown keys .*known keys are"):
        RunConfig.from_dict(dict.fromkeys(keys, 1))


@FUZZ
@given(text=st.text(max_size=80) | st.binary(max_size=80))
def test_any_toml_file_is_a_config_or_a_config_error(text, tmp_path_factory):
    from jaxtyping import TypeCheckError

    path = tmp_path_factory.mktemp("toml") / "run.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        RunConfig.from_toml(path)
    except TypeCheckError:  # a wrong type, stopped by the tests' instrumentation (see _from_dict)
        pass
    except ConfigError as e:
        assert str(path) in str(e) or "config key" in str(e) or "unknown keys" in str(e)


def test_a_toml_folder_or_non_utf8_file_is_a_config_error(tmp_path):
    (tmp_path / "bytes.toml").write_bytes(b"\x80\xff = 1")
    with pytest.raises(ConfigError, match="UTF-8"):
        RunConfig.from_toml(tmp_path / "bytes.toml")
    with pytest.raises(ConfigError, match="is a folder; pass the path of a TOML file"):
        RunConfig.from_toml(tmp_path)


# ---- JSONL chat files (screen) and conversation files (monitor) ---------------------------------

messages = st.lists(
    st.fixed_dictionaries(
        {}, optional={"role": st.sampled_from(["system", "user", "assistant", "tool", 3, None]), "content": json_values}
    )
    | json_values,
    max_size=4,
)
jsonl_lines = st.lists(
    st.one_of(
        st.builds(lambda m: json.dumps({"messages": m}), messages),
        st.builds(json.dumps, json_values),
        st.text(max_size=20),
        st.just(""),
    ),
    max_size=5,
)


FIXES = ("write", "give", "put", "pass", "use", "add", "end it", "save it", "join", "drop")


def _says_what_to_do(message: str) -> bool:
    return any(f in message for f in FIXES)


def _write_lines(lines, raw: bytes | None = None) -> Path:
    path = Path(tempfile.mkdtemp(prefix="fuzz-")) / "data.jsonl"
    path.write_bytes(raw if raw is not None else "\n".join(lines).encode("utf-8", "surrogatepass"))
    return path


@FUZZ
@given(lines=jsonl_lines, raw=st.none() | st.binary(max_size=40))
def test_any_chat_jsonl_reads_or_raises_a_dataset_error_naming_the_file(lines, raw):
    from persona_gate.screening.data import read_chat_jsonl

    path = _write_lines(lines, raw)
    try:
        examples = read_chat_jsonl(path)
    except DatasetError as e:
        assert str(path) in str(e) and _says_what_to_do(str(e)), str(e)
    else:
        assert examples and all(ex.reply.strip() for ex in examples)
    finally:
        shutil.rmtree(path.parent)


@FUZZ
@given(
    lines=st.lists(
        st.builds(json.dumps, messages.flatmap(lambda m: st.sampled_from(m or [{}]))) | st.text(max_size=20)
    ),
    raw=st.none() | st.binary(max_size=40),
)
def test_any_conversation_file_loads_or_raises_a_conversation_error(lines, raw):
    from persona_gate.prompts.conversation import Conversation

    path = _write_lines(lines, raw)
    try:
        conv = Conversation.load_jsonl(path)
    except ConversationError as e:
        assert _says_what_to_do(str(e)), str(e)
    else:
        assert conv.turns
    finally:
        shutil.rmtree(path.parent)


def test_a_folder_or_a_missing_file_is_a_named_error_too(tmp_path):
    from persona_gate.prompts.conversation import Conversation
    from persona_gate.screening.data import read_chat_jsonl

    for path in (tmp_path, tmp_path / "missing.jsonl"):
        with pytest.raises(DatasetError, match="JSONL file"):
            read_chat_jsonl(path)
        with pytest.raises(ConversationError, match="JSONL file"):
            Conversation.load_jsonl(path)


# ---- saved folders -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from persona_gate.core.directions import DirectionSet
    from persona_gate.results import LabelledResult
    from persona_gate.sites import HookSite

    root = tmp_path_factory.mktemp("saved")
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    ds = DirectionSet(
        "persona",
        tuple(HookSite(i, "resid_pre") for i in range(3)),
        v,
        torch.rand(3, generator=g) + 0.5,
        "compliant",
        "safe",
        {"compliant": 4, "safe": 4},
        "mean:system",
        pos_mean=torch.randn(3, 8, generator=g),
        neg_mean=torch.randn(3, 8, generator=g),
    )
    ds.save(root / "directions")
    res = LabelledResult(
        "steering_sweep",
        ("layer", "alpha"),
        {"layer": [0, 1], "alpha": [0.0, 2.0, 4.0]},
        {"refusal_rate": torch.rand(2, 3, generator=g)},
        config={"n": 4},
    )
    res.save(root / "result")
    return root, {"directions": DirectionSet.load, "result": LabelledResult.load}


def _mutate_manifest(path: Path, drop: list[str], set_key: str | None, value) -> None:
    m = json.loads(path.read_text())
    m.pop("checksum", None)  # a hand edit: without the checksum the loader must check every field itself
    keys = sorted(m)
    for i in drop:
        m.pop(keys[zlib.crc32(i.encode()) % len(keys)], None)
    if set_key is not None:
        m[keys[zlib.crc32(set_key.encode()) % len(keys)]] = value
    path.write_text(json.dumps(m))


@FUZZ
@given(
    which=st.sampled_from(["directions", "result"]),
    action=st.sampled_from(["remove", "truncate", "flip", "manifest", "garbage"]),
    target=st.sampled_from(["manifest.json", "tensors.safetensors"]),
    cut=st.floats(0, 1),
    drop=st.lists(st.text(max_size=3), max_size=2),
    set_key=st.none() | st.text(max_size=3),
    value=json_values,
)
def test_a_damaged_saved_folder_is_an_artefact_error_that_says_save_again(
    saved, which, action, target, cut, drop, set_key, value
):
    root, loaders = saved
    folder = root / f"damaged-{uuid.uuid4().hex[:8]}"
    shutil.copytree(root / which, folder)
    files = {p.name: p for p in folder.iterdir()}
    assume(target in files)
    path = files[target]
    data = path.read_bytes()
    if action == "remove":
        path.unlink()
    elif action == "truncate":
        path.write_bytes(data[: int(cut * (len(data) - 1))])
    elif action == "flip":
        i = int(cut * (len(data) - 1))
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1 :])
    elif action == "garbage":
        path.write_bytes(json.dumps(value).encode())
    else:
        _mutate_manifest(files["manifest.json"], drop, set_key, value)
    try:
        loaders[which](folder)
    except PersonaGateError as e:
        assert isinstance(e, (ArtefactError, ValueError)), type(e)
        fixes = ("again", "upgrade", "refit", "check the path", "not written by persona_gate")
        assert any(f in str(e) for f in fixes), str(e)
    finally:
        shutil.rmtree(folder)


# ---- command lines -------------------------------------------------------------------------------


class _Work(Exception):
    """Raised where a command would start model work: everything before it was validation."""


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "chat.jsonl").write_text('{"role": "user", "content": "hello"}\n')
    (root / "data.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    (root / "bad.jsonl").write_text("{not json\n")
    (root / "a-file.txt").write_text("text")
    (root / "run.toml").write_text("n_evl = 3\n")
    return root


COMMANDS = {  # the positional arguments each command needs, from the pool below
    "directions": 0,
    "demo": 0,
    "run": 0,
    "report": 1,
    "redteam": 0,
    "compare": 0,
    "monitor": 1,
    "screen": 1,
    "guard": 0,
    "export model": 0,
    "export control-vector": 0,
    "export directions": 0,
}
FLAGS = [
    "--layers",
    "--n",
    "--batch-size",
    "--seed",
    "--kind",
    "--windows",
    "--percentiles",
    "--width",
    "--readd-refusal",
    "--flag-layer",
    "--target-fpr",
    "--n-train",
    "--turns",
    "--reading",
    "--calibration",
    "--directions",
    "--config",
    "--plan",
    "--flops",
    "--mfu",
    "--families",
    "--requests",
    "--model-b",
    "--max-new-tokens",
    "--ablate",
    "--steer",
    "--alpha",
    "--source-layer",
    "--units",
    "--max-tokens",
    "--top",
    "--dtype",
    "--refusal-position",
    "--no-such-flag",
    "--no-progress",
    "--validate",
    "--seeds",
    "--device",
]
VALUES = ["", "0", "-1", "99", "1,99", "1,,2", "abc", "3-5", "5-3", "nan", "1e9", "persona", "{f}", "{d}", "{bad}"]


def _argv(draw, root: Path, out: Path) -> list[str]:
    command = draw(st.sampled_from(sorted(COMMANDS))).split()
    pool = [v.format(f=root / "a-file.txt", d=root, bad=root / "bad.jsonl") for v in VALUES]
    pool += [str(root / "chat.jsonl"), str(root / "data.jsonl"), str(root / "run.toml"), str(root / "missing")]
    argv = list(command)
    for _ in range(COMMANDS[" ".join(command)]):
        argv.append(draw(st.sampled_from(pool)))
    for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=4, unique=True)):
        argv += [flag] if flag in ("--plan", "--no-progress", "--validate") else [flag, draw(st.sampled_from(pool))]
    if draw(st.booleans()):
        argv += ["--out", str(out)]
    return argv


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_command_line_exits_0_or_2_with_one_line_and_leaves_no_folder(cli_env, data, monkeypatch, capsys):
    import persona_gate.compare.checkpoints as checkpoints
    import persona_gate.models.loading as loading
    import persona_gate.screening.validation as validation
    from persona_gate.cli.main import main

    def work(*a, **k):
        raise _Work

    for module, name in (
        (loading, "load_chat_model"),
        (checkpoints, "compare_checkpoints"),
        (validation, "validate_screening"),
    ):
        monkeypatch.setattr(module, name, work)
    monkeypatch.chdir(cli_env)  # a default --out (runs/...) lands in the scratch folder
    out = cli_env / f"out-{uuid.uuid4().hex[:8]}" / "nested"
    argv = _argv(data.draw, cli_env, out)
    made = []
    mkdir = os.mkdir

    def spy(path, *a, **k):  # every folder made, also one removed again before the command returns
        made.append(os.path.abspath(os.fspath(path)))
        return mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", spy)
    before = sorted(p.name for p in cli_env.iterdir())
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: a usage error (2) or --help (0)
        code = e.code
    except _Work:
        code = None  # validation passed and model work would start: fine
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (0, 2, None), (argv, code, err)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("persona-gate: error:"), (argv, err)
    if code != 0:  # nothing is left behind by a command that did not finish
        assert not out.parent.exists(), (argv, err)
        assert sorted(p.name for p in cli_env.iterdir()) == before, (argv, err)
    if code == 2:  # ... and a command whose input was bad never made a folder at all
        assert not [p for p in made if p.startswith(str(cli_env))], (argv, err, made)
