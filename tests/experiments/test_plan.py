"""The cost plan (``persona-gate run --plan``): its counts are what a run executes.

A pipeline run on the organism is counted with hooks -- every block call (rows x sequence
positions it completes, and the forwards that enter the model), every unembedded row, and the
block inputs prefix reuse and patching keep (their peak per stage) -- and attributed to stages
by the pipeline's own log lines; the plan made beforehand must give the same numbers per stage.
A plan made without weights (from ``config.json`` on the meta device) equals the loaded model's
on every tiny architecture, and the committed 8B configurations plan offline to numbers computed
here by hand. Also: finished stages plan as done, the FLOP model adds up, bad accelerators are
named errors before the model loads, and the CLI prints the table.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from pathlib import Path

import pytest

import persona_gate.experiments.patching as patching
import persona_gate.grid.prefix as prefix
import persona_gate.grid.run as grid_run
import persona_gate.models.loading as loading
from persona_gate.cli.main import main
from persona_gate.errors import ConfigError
from persona_gate.experiments.pipeline import RunConfig, run_pipeline
from persona_gate.experiments.plan import ACCELERATORS, accelerator_flops, format_plan, plan_run
from persona_gate.models.weightless import estimating_tokenizer, load_weightless

PAPER = Path(__file__).resolve().parents[2] / "paper"

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = RunConfig(
    model="organism", n_fit=12, n_eval=6, alphas=[0.0, 2.0, 4.0], window_width=3, random_seeds=2, patch_examples=2
)
COUNTED = ("forwards", "tokens", "block_tokens", "head_rows")


class _Counter(logging.Handler):
    """Counts what the model runs, per pipeline stage (switched by the pipeline's 'stage X: computing' lines)."""

    def __init__(self, model):
        super().__init__(logging.INFO)
        self.stage = "load"
        self.counts: dict[str, dict[str, int]] = {}
        self.expect = 0
        L = len(model.blocks)

        def enter(j):
            def fn(module, args, kwargs):
                x = args[0] if args else next(iter(kwargs.values()))
                c = self._now()
                if j == 0 or j != self.expect:  # a new pass enters the model here
                    c["forwards"] += x.shape[0]
                    c["tokens"] += x.shape[0] * x.shape[1]

            return fn

        def done(j):
            def fn(module, args, out):
                x = out[0] if isinstance(out, tuple) else out
                self._now()["block_tokens"] += x.shape[0] * x.shape[1]
                self.expect = j + 1 if j + 1 < L else -1

            return fn

        def head(module, args, out):
            self._now()["head_rows"] += out.numel() // out.shape[-1]

        self.handles = [b.register_forward_pre_hook(enter(j), with_kwargs=True) for j, b in enumerate(model.blocks)]
        self.handles += [b.register_forward_hook(done(j)) for j, b in enumerate(model.blocks)]
        self.handles.append(model.unembed.register_forward_hook(head))

    def _now(self):
        return self.counts.setdefault(self.stage, {k: 0 for k in COUNTED})

    def emit(self, record):
        if record.msg == "stage %s: computing":
            self.stage = record.args[0]

    def remove(self):
        for h in self.handles:
            h.remove()


class _Records:
    """The peak of residual values held in block records per stage: every grid call's records
    (all its batches at once) and every patching pair's two replays (block inputs and site
    activations), measured on the tensors the run keeps."""

    def __init__(self, counter: _Counter, monkeypatch) -> None:
        self.counter, self.now = counter, 0
        self.peak: dict[str, int] = {}
        real_cells, real_record, real_pair = grid_run.cell_logprobs, prefix.record_blocks, patching._patch_pair
        meter = self

        def group(fn):
            def wrapped(*args, **kwargs):
                meter.now = 0
                try:
                    return fn(*args, **kwargs)
                finally:
                    meter.peak[counter.stage] = max(meter.peak.get(counter.stage, 0), meter.now)

            return wrapped

        def record(*args, **kwargs):
            rec, logits = real_record(*args, **kwargs)
            meter.now += sum(x.numel() for x in rec.inputs.values())
            return rec, logits

        class Replay(patching.PromptReplay):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                meter.now += sum(x.numel() for x in [*self.record.inputs.values(), *self.acts.values()])

        monkeypatch.setattr(grid_run, "cell_logprobs", group(real_cells))
        monkeypatch.setattr(prefix, "record_blocks", record)
        monkeypatch.setattr(patching, "_patch_pair", group(real_pair))
        monkeypatch.setattr(patching, "PromptReplay", Replay)


@pytest.fixture(scope="module")
def organism():
    return loading.load_chat_model("organism")


def test_the_plan_counts_what_the_run_executes(organism, tmp_path, monkeypatch):
    plan = plan_run(CFG, organism, probe=False)
    stages = {s["stage"]: s for s in plan["stages"]}
    assert list(stages) == [
        "directions",
        "steering_sweep",
        "reintroduction",
        "window_projection",
        "patching",
        "direction_patching",
    ]
    counter = _Counter(organism)
    records = _Records(counter, monkeypatch)
    log = logging.getLogger("persona_gate.experiments.pipeline")
    log.addHandler(counter)
    old_level = log.level
    log.setLevel(logging.INFO)
    monkeypatch.setattr(loading, "load_chat_model", lambda *a, **k: organism)
    try:
        run_pipeline(CFG, tmp_path / "run", progress=False)
    finally:
        counter.remove()
        log.removeHandler(counter)
        log.setLevel(old_level)
    assert set(counter.counts) - {"load"} == set(stages)
    for name, s in stages.items():
        assert {k: s[k] for k in COUNTED} == counter.counts[name], name
        assert s["exact"] and not s["done"]
        # The prefix records' peak: what the run held, in float32 (4 bytes a value).
        assert s["records"] == records.peak.get(name, 0) and s["record_bytes"] == 4 * s["records"], name
    assert min(records.peak[n] for n in ("steering_sweep", "reintroduction", "window_projection", "patching")) > 0
    assert plan["total"]["record_bytes"] == max(s["record_bytes"] for s in stages.values())
    # Cells as the results hold them.
    assert stages["steering_sweep"]["cells"] == 2 * 5 * 3 and stages["window_projection"]["cells"] == 3 * 4
    # A finished run plans as done: nothing left to pay for.
    again = plan_run(CFG, organism, tmp_path / "run", probe=False)
    assert all(s["done"] and s["block_tokens"] == 0 for s in again["stages"])


def test_the_flop_model_and_the_accelerator_estimate(organism):
    plan = plan_run(CFG, organism, probe=True, accelerator="h100", mfu=0.5)
    fm = plan["flops_model"]
    for s in plan["stages"]:
        want = (
            2 * fm["block_parameters"] * s["block_tokens"]
            + 2 * fm["attention_width"] * s["attention"]
            + 2 * fm["d_model"] * fm["vocab"] * s["head_rows"]
        )
        assert s["flops"] == want
        assert s["seconds_on_accelerator"] == pytest.approx(want / (ACCELERATORS["H100"] * 0.5))
        assert s["seconds_here"] >= 0
    assert plan["total"]["flops"] == sum(s["flops"] for s in plan["stages"])
    # One block's parameters, counted from the model itself.
    assert fm["block_parameters"] == sum(p.numel() for p in organism.blocks[0].parameters())
    text = format_plan(plan)
    assert "on H100" in text and "total" in text and "steering_sweep" in text


def test_accelerators_are_named_or_numbers_and_anything_else_is_an_error():
    assert accelerator_flops("A100") == ("A100", 312e12)
    assert accelerator_flops("4e14")[1] == 4e14
    for bad in ("TPU9000", "-3", "nan"):
        with pytest.raises(ConfigError):
            accelerator_flops(bad)


def test_run_plan_on_the_command_line(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'model = "organism"\nn_fit = 8\nn_eval = 4\nalphas = [0.0, 2.0]\nwindow_width = 3\nrandom_seeds = 1\npatch_examples = 1\n'
    )
    assert (
        main(["run", "--plan", "--config", str(cfg), "--flops", "L4", "--plan-json", str(tmp_path / "plan.json")]) == 0
    )
    out = capsys.readouterr().out
    assert "on L4" in out and "window_projection" in out
    assert json.loads((tmp_path / "plan.json").read_text())["accelerator"]["name"] == "L4"
    assert not (tmp_path / "run").exists()
    # A bad accelerator fails before the model loads; --flops without --plan and no --out are named errors.
    monkeypatch.setattr(loading, "load_chat_model", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(["run", "--plan", "--config", str(cfg), "--flops", "TPU9000"]) != 0
    assert "unknown accelerator" in capsys.readouterr().err
    assert main(["run", "--config", str(cfg), "--flops", "H100", "--out", str(tmp_path / "r")]) != 0
    assert "add --plan" in capsys.readouterr().err
    assert main(["run", "--config", str(cfg)]) != 0
    assert "--out" in capsys.readouterr().err


def test_run_plan_loads_the_model_as_the_config_says(tmp_path, monkeypatch):
    """--plan loads through RunConfig.load_model: the config's device_map (or --device-map) reaches the loader."""

    class Loaded(Exception):
        pass

    seen = []

    def fake_load(*args, **kwargs):
        seen.append((args, kwargs))
        raise Loaded

    monkeypatch.setattr(loading, "load_chat_model", fake_load)
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "organism"\ndtype = "bfloat16"\ndevice_map = "auto"\nchat_template = "chatml"\n')
    with pytest.raises(Loaded):
        main(["run", "--plan", "--config", str(cfg)])
    assert seen[-1] == (
        ("organism",),
        {"dtype": "bfloat16", "device": None, "device_map": "auto", "chat_template": "chatml"},
    )
    with pytest.raises(Loaded):
        main(["run", "--plan", "--model", "organism", "--device-map", "balanced"])
    assert seen[-1][1]["device_map"] == "balanced" and seen[-1][1]["device"] is None
    with pytest.raises(Loaded):
        RunConfig(device="cpu").load_model(device="cuda")  # the config's own device wins over the fallback
    assert seen[-1][1]["device"] == "cpu"


def test_the_plan_is_typed_and_its_json_is_the_plan_json(organism):
    from persona_gate.experiments.plan import Plan, PlanStage

    plan = plan_run(CFG, organism, probe=False, accelerator="L4")
    assert isinstance(plan, Plan) and all(isinstance(s, PlanStage) for s in plan.stages)
    d = plan.to_dict()
    assert list(d) == [
        *("model", "n_layers", "stages", "total", "probe", "accelerator", "flops_model"),
        *("dtype", "parameters", "weights_bytes", "weightless", "tokens_estimated", "notes", "schema_version"),
    ]
    cost = ["forwards", "tokens", "block_tokens", "head_rows", "generated", "attention", "records"]
    want = ["stage", "cells", "done", "exact", *cost, "flops", "record_bytes", "seconds_on_accelerator"]  # no probe
    assert all(list(s) == want for s in d["stages"]) and plan.probe is None and "seconds_here" not in d["total"]
    assert Plan.from_json(plan.to_json()) == plan and Plan.from_dict(d) == plan
    assert plan.stages[0].block_tokens == d["stages"][0]["block_tokens"] and plan["total"] == d["total"]
    assert format_plan(plan) == format_plan(d)
    # A plan written before memory was counted still reads (no records, no weights known).
    old = {**d, "stages": [{k: v for k, v in s.items() if k not in ("records", "record_bytes")} for s in d["stages"]]}
    for key in ("dtype", "parameters", "weights_bytes", "weightless", "tokens_estimated", "notes"):
        del old[key]
    assert Plan.from_dict(old).stages[1].record_bytes == 0 and Plan.from_dict(old).weights_bytes == 0


# ---------------------------------------------------------------- plans without weights

SMALL = dict(n_fit=8, n_eval=4, alphas=[0.0, 2.0], window_width=2, random_seeds=1, patch_examples=1)


def test_a_plan_without_weights_equals_the_loaded_plan(tiny_models, tiny_model_dirs, arch):
    """From config.json and tokenizer.json alone (meta device): every stage's counts are the loaded model's."""
    folder = tiny_model_dirs[arch]
    cfg = RunConfig(model=str(folder), extraction_sites=True, **SMALL)
    weightless = load_weightless(folder)
    assert next(weightless.parameters()).device.type == "meta" and not weightless.tokens_estimated
    with pytest.raises(Exception, match="without its weights"):
        weightless(None)
    planned = plan_run(cfg, weightless, probe=True).to_dict()  # nothing to time: the probe is skipped
    loaded = plan_run(cfg, tiny_models[arch], probe=False).to_dict()
    assert planned["weightless"] and not loaded["weightless"] and planned["probe"] is None
    assert [s["stage"] for s in planned["stages"]] == [
        "directions",
        "refusal_tokens",
        "steering_sweep",
        "reintroduction",
        "window_projection",
        "patching",
        "direction_patching",
        "extraction_sites",
    ]
    for mine, theirs in zip(planned["stages"], loaded["stages"], strict=True):
        assert mine == theirs  # cells, forwards, tokens, block-tokens, head rows, records, FLOPs
    assert min(s["forwards"] for s in planned["stages"]) > 0
    assert planned["total"] == loaded["total"] and planned["flops_model"] == loaded["flops_model"]
    assert planned["parameters"] == loaded["parameters"] and planned["weights_bytes"] == 4 * planned["parameters"]
    # A bridge over GPT-NeoX or Falcon also holds its own copies of the fused q/k/v projection (the
    # others' are views of it): more memory than the architecture's weights, the same compute.
    if arch in ("gpt_neox", "falcon"):
        assert planned["weights_bytes"] < loaded["weights_bytes"]
    else:
        assert planned["weights_bytes"] == loaded["weights_bytes"]


def test_the_organism_plans_the_same_without_its_weights(organism, tmp_path, monkeypatch, capsys):
    assert plan_run(CFG, load_weightless("organism"), probe=False).stages == plan_run(CFG, organism, probe=False).stages
    # On the command line: --plan-config names a model folder, and no weights are loaded.
    monkeypatch.setattr(loading, "load_chat_model", lambda *a, **k: pytest.fail("loaded the weights"))
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "organism"\nn_fit = 8\nn_eval = 4\nalphas = [0.0, 2.0]\npatch_examples = 1\n')
    assert main(["run", "--plan", "--config", str(cfg), "--plan-config", str(loading.organism_dir())]) == 0
    out = capsys.readouterr().out
    assert "made without weights" in out and "ESTIMATED" not in out and "patching" in out
    assert main(["run", "--config", str(cfg), "--plan-config", "x", "--out", str(tmp_path / "r")]) != 0
    assert "add --plan" in capsys.readouterr().err


def test_the_estimating_tokenizer_counts_by_its_rule():
    tok = estimating_tokenizer("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    # Hello | , | " world" | ! | " I" | ' | m | " " | 123 | 45 | " years" | " old" | . | "\n\n"
    assert len(tok("Hello, world! I'm 12345 years old.\n\n", add_special_tokens=False)["input_ids"]) == 14
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=False)
    assert chat == "<|im_start|>Hi there<|im_end|>" and len(tok(chat, add_special_tokens=False)["input_ids"]) == 4


@pytest.mark.slow
def test_a_real_model_plans_the_same_without_weights_and_its_token_estimate_is_close(gemma, tmp_path):
    """Gemma 3 270M: from its config.json and tokenizer.json the plan is the loaded model's; from the
    config alone (the estimating tokenizer) every count but the tokens is the same, and the tokens are
    within 5% of what Gemma's own tokenizer (262k vocabulary) makes of the same prompts."""
    from persona_gate.models.adapter import weights_folder

    folder = weights_folder(gemma)
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    cfg = RunConfig(model="gemma3-270m-gguf", chat_template="gemma", **{**SMALL, "n_fit": 16, "n_eval": 16})
    exact = plan_run(cfg, load_weightless(folder, chat_template="gemma"), probe=False)
    assert exact.stages == plan_run(cfg, gemma, probe=False).stages and not exact.tokens_estimated
    estimated = plan_run(cfg, load_weightless(tmp_path, chat_template="gemma"), probe=False)
    assert estimated.tokens_estimated and exact.parameters == estimated.parameters
    for a, b in zip(estimated.stages, exact.stages, strict=True):
        assert (a.stage, a.cells, a.forwards) == (b.stage, b.cells, b.forwards)
        assert abs(a.tokens / b.tokens - 1) < 0.05, (a.stage, a.tokens, b.tokens)


def _offline(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("a plan without weights used the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(loading, "load_chat_model", lambda *a, **k: pytest.fail("loaded the weights"))
    monkeypatch.setenv("PERSONA_GATE_CACHE", str(tmp_path / "cache"))  # no public set cached here


def test_the_8b_plan_needs_no_weights_and_matches_a_hand_count(monkeypatch, tmp_path):
    from persona_gate.prompts.chat import render_all
    from persona_gate.scoring.refusal import eval_groups

    _offline(monkeypatch, tmp_path)
    cfg = RunConfig.from_toml(PAPER / "llama-3.1-8b-instruct.toml")
    model = cfg.plan_model(PAPER)
    plan = plan_run(cfg, model, accelerator="H100")
    assert plan.weightless and plan.tokens_estimated and plan.dtype == "bfloat16" and plan.n_layers == 32
    assert any("strongreject" in note for note in plan.notes)  # not cached: the own harmful split stands in
    # Parameters from the public facts: q and o d x d, k and v d x (8 heads x 128), three MLP matrices,
    # two RMS norms per block; embeddings and an untied head of V x d; the final norm.
    V, d, L, ff, kv = 128256, 4096, 32, 14336, 8 * 128
    block = 2 * d * d + 2 * d * kv + 3 * d * ff + 2 * d
    assert plan.flops_model["block_parameters"] == block and plan.parameters == 2 * V * d + L * block + d
    assert plan.weights_bytes == 2 * plan.parameters  # bfloat16
    # Re-introduction: the refusal direction added at each layer 1..31 to the compliant persona's harmful
    # prompts (one padded batch of n), each cell re-running from its layer after one clean run that keeps
    # the block inputs of all 31 first layers; then the safe persona's baseline, one full pass.
    groups = eval_groups(model, cfg.n_eval, seed=cfg.seed)
    n = len(groups["compliant/harmful"])
    seq = max(len(r) for r in render_all(model.tokenizer, groups["compliant/harmful"]))
    seq_safe = max(len(r) for r in render_all(model.tokenizer, groups["safe/harmful"]))
    assert n <= 32  # one batch (the scorer's batch size)
    st = next(s for s in plan.stages if s.stage == "reintroduction")
    assert st.cells == L - 1 and st.forwards == n + (L - 1) * n + n
    assert st.tokens == L * n * seq + n * seq_safe
    assert st.block_tokens == n * seq * L + sum(n * seq * (L - k) for k in range(1, L)) + n * seq_safe * L
    assert st.record_bytes == (L - 1) * n * seq * d * 2
    assert plan.total["record_bytes"] == max(s.record_bytes for s in plan.stages) > st.record_bytes // 2


def test_the_paper_configs_plan_on_the_command_line_offline(monkeypatch, tmp_path, capsys):
    _offline(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)  # plan_config is found beside the TOML file, wherever the command runs
    assert main(["run", "--plan", "--config", str(PAPER / "qwen2.5-7b-instruct.toml"), "--flops", "H100"]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen2.5-7B-Instruct (28 layers)" in out and "ESTIMATED" in out and "on H100" in out
    # Qwen 2.5 7B: biases on q, k and v (d + 2 x 4 heads x 128), untied head.
    V, d, L, ff, kv = 152064, 3584, 28, 18944, 4 * 128
    params = 2 * V * d + L * (2 * d * d + 2 * d * kv + d + 2 * kv + 3 * d * ff + 2 * d) + d
    assert f"{params / 1e9:.2f} B parameters in bfloat16" in out
    assert main(["run", "--plan", "--config", str(PAPER / "llama-3.1-8b-instruct.toml")]) == 0
    assert "meta-llama/Llama-3.1-8B-Instruct (32 layers)" in capsys.readouterr().out

    # Another --model is another architecture: the file's plan_config is dropped and the model loaded.
    class Loaded(Exception):
        pass

    def load(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(loading, "load_chat_model", load)
    with pytest.raises(Loaded):
        main(["run", "--plan", "--config", str(PAPER / "llama-3.1-8b-instruct.toml"), "--model", "organism"])


def test_a_public_harmful_set_on_disk_is_planned_with_its_own_prompts(shared_data, monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    cfg = RunConfig.from_dict(
        {
            **RunConfig.from_toml(PAPER / "llama-3.1-8b-instruct.toml").__dict__,
            "harmful_source": str(shared_data / "strongreject" / "strongreject_dataset.csv"),
        }
    )
    plan = plan_run(cfg, cfg.plan_model(PAPER))
    assert not plan.notes and plan.stages[0].stage == "directions"
