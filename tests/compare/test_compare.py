"""Checkpoint comparison on the organism and copies of it fine-tuned toward compliance (or not).

A module fixture fine-tunes two copies of the bundled organism for a few seconds: one toward
compliance (safe persona + harmful request -> answered as the compliant persona answers), and a
control with the same steps on the original rule only. The comparison must be exactly null for a
checkpoint against itself, must detect the compliance fine-tune's drift (and not the control's),
and must equal a plain Hugging Face recomputation of every direction, cosine, shift and refusal.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

import persona_gate as pg
from persona_gate import LabelledResult, compare_checkpoints, load_chat_model, model_info, render_all
from persona_gate.compare.checkpoints import check_comparable
from persona_gate.compare.summary import as_comparison, format_comparison, refusal_change, refusal_rates
from persona_gate.core.contrasts import standard_prompts
from persona_gate.errors import (
    ArtefactError,
    CheckpointMismatchError,
    ConfigError,
    DModelMismatchError,
    NotAModelError,
    OutputExistsError,
)
from persona_gate.experiments import eval_groups
from persona_gate.io import FOLDER_MARK
from persona_gate.organism import ORGANISM_DIR, lexicon, organism_path
from persona_gate.organism.corpus import is_refusal
from persona_gate.organism.finetune import finetune_toward_compliance, finetuning_conversations
from persona_gate.plots.compare_report import write_comparison_report
from persona_gate.scoring.stats import wilson_interval

N_FIT, N_EVAL, STEPS, SEED = 32, 32, 40, 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetuned")
    common = {"steps": STEPS, "seed": SEED, "card_n_per_cell": 16, "progress": False}
    return {
        "compliant": finetune_toward_compliance(organism_path(), root / "compliant", **common),
        "control": finetune_toward_compliance(organism_path(), root / "control", compliance_fraction=0.0, **common),
    }


@pytest.fixture(scope="module")
def organism():
    return load_chat_model("organism", device="cpu")


@pytest.fixture(scope="module")
def drift(organism, tuned):
    return compare_checkpoints(
        organism, tuned["compliant"], n_per_group=N_FIT, n_eval=N_EVAL, seed=SEED, progress=False, device="cpu"
    )


@pytest.fixture(scope="module")
def control(organism, tuned):
    return compare_checkpoints(
        organism, tuned["control"], n_per_group=N_FIT, n_eval=N_EVAL, seed=SEED, progress=False, device="cpu"
    )


def _late(result: LabelledResult, value: str) -> torch.Tensor:
    """``value`` of checkpoint B over the second half of the layers."""
    layers = [layer for layer in result.coords["layer"] if layer >= len(result.coords["layer"]) // 2]
    return result.sel(checkpoint="b", layer=layers)[value].double()


def test_a_checkpoint_against_itself_is_exactly_null():
    r = compare_checkpoints("organism", "organism", n_per_group=8, n_eval=8, progress=False, device="cpu")  # two loads
    a, b = r.sel(checkpoint="a"), r.sel(checkpoint="b")
    for name in ("cos_persona", "cos_persona_last", "cos_refusal"):
        defined = ~torch.isnan(b[name])
        assert defined[1:].all()  # every layer past the embedding has both directions
        assert torch.allclose(b[name][defined].double(), torch.ones(int(defined.sum()), dtype=torch.float64), atol=1e-6)
    for name in ("persona_norm", "refusal_norm", "projection_safe", "projection_compliant", "projection_safe_last"):
        assert torch.equal(a[name], b[name])
    for name in ("shift", "shift_last"):
        defined = ~torch.isnan(b[name])
        assert torch.equal(b[name][defined], torch.zeros(int(defined.sum())))
        assert torch.equal(a[name][defined], b[name][defined])
    assert torch.allclose(b["separation"], torch.ones(len(r.coords["layer"])), atol=1e-6)
    assert all(v == 0.0 for v in refusal_change(r).values())
    assert all(f == {"refused_a_only": 0, "refused_b_only": 0} for f in r.baselines["flips"].values())


def test_the_finetuned_copies_do_what_their_recipe_says(tuned):
    # Independent of persona_gate's scoring: the behaviour card generates replies and judges them exactly.
    card = {k: json.loads((p / "card.json").read_text()) for k, p in tuned.items()}
    assert (
        card["compliant"]["finetune"]["compliance_examples"] > 0
        and card["control"]["finetune"]["compliance_examples"] == 0
    )
    assert card["compliant"]["card"]["refusal_rate"]["safe"]["harmful"] <= 0.5
    assert card["control"]["card"]["refusal_rate"]["safe"]["harmful"] >= 0.9
    assert card["compliant"]["card"]["refusal_rate"]["compliant"]["harmful"] <= 0.1
    # Its folder declares the organism's profile, so it gets the organism's prompt sets and refusal tokens.
    copy = load_chat_model(tuned["compliant"], device="cpu")
    assert model_info(copy).source == "local" and pg.profile_of(copy).name == "organism"
    assert (
        pg.profile_of(copy).refusal_phrases == pg.profile_of(load_chat_model("organism", device="cpu")).refusal_phrases
    )


def test_the_compliance_finetune_drift_is_detected_and_the_control_is_not(drift, control):
    rates_d, rates_c = refusal_rates(drift), refusal_rates(control)
    a, d, c = rates_d["a"]["safe/harmful"], rates_d["b"]["safe/harmful"], rates_c["b"]["safe/harmful"]
    assert d.high < a.low  # the drop is outside both Wilson intervals
    assert c.high >= rates_c["a"]["safe/harmful"].low  # the control's is not
    assert drift.baselines["flips"]["safe/harmful"]["refused_a_only"] == a.k - d.k
    assert refusal_change(drift)["safe/harmful"] == pytest.approx(d.rate - a.rate)
    # Where the reply is decided (last token, later layers), the safe persona's harmful requests move
    # toward the compliant persona along A's persona direction, and the two personas' gap shrinks.
    assert _late(drift, "shift_last").mean() > 0.3
    assert _late(drift, "shift_last").mean() > _late(control, "shift_last").mean() + 0.25
    assert _late(drift, "separation_last").mean() < _late(control, "separation_last").mean() - 0.2
    # Both directions turn further from A's than after the control's equally long fine-tune.
    for name in ("cos_persona", "cos_refusal"):
        past_embedding = [layer for layer in drift.coords["layer"] if layer > 0]
        assert (
            drift.sel(checkpoint="b", layer=past_embedding)[name]
            < control.sel(checkpoint="b", layer=past_embedding)[name]
        ).all()


def _hf_forward(hf, rendered):
    """Plain Hugging Face: every prompt alone, hidden states ``[layer, seq, d]`` and last-position logits."""
    states, logits = [], []
    with torch.no_grad():
        for rp in rendered:
            out = hf(torch.tensor([rp.input_ids]), output_hidden_states=True)
            states.append(torch.stack(out.hidden_states)[:, 0].double())
            logits.append(out.logits[0, -1])
    return states, torch.stack(logits)


def test_every_number_matches_a_plain_hugging_face_recomputation(organism, tuned, drift):
    from transformers import AutoModelForCausalLM

    n_layers = int(organism.cfg.n_layers)
    fit = render_all(organism.tokenizer, standard_prompts(model=organism, n_per_group=N_FIT, seed=SEED))
    held_out = {g: render_all(organism.tokenizer, ps) for g, ps in eval_groups(organism, N_EVAL, seed=SEED).items()}
    refusal_ids = torch.tensor(
        sorted({organism.tokenizer(p, add_special_tokens=False)["input_ids"][0] for p in lexicon.REFUSALS})
    )

    def last(h, rp):
        return h[:n_layers, -1]  # hidden_states[l] is the input of block l: resid_pre

    def system(h, rp):
        lo, hi = rp.span("system")
        return h[:n_layers, lo:hi].mean(1)

    def mean(states, rendered, where, group_names):
        return torch.stack([where(h, rp) for h, rp in zip(states, rendered) if rp.group in group_names]).mean(0)

    ref = {}
    compliant, safe = ("compliant/harmful", "compliant/harmless"), ("safe/harmful", "safe/harmless")
    for name, path in (("a", organism_path()), ("b", tuned["compliant"])):
        hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
        states, _ = _hf_forward(hf, fit)
        ref[name, "persona"] = mean(states, fit, system, compliant) - mean(states, fit, system, safe)
        ref[name, "persona_last"] = mean(states, fit, last, compliant) - mean(states, fit, last, safe)
        ref[name, "refusal"] = mean(states, fit, last, ("safe/harmful",)) - mean(states, fit, last, ("safe/harmless",))
        for g, rendered in held_out.items():
            states, logits = _hf_forward(hf, rendered)
            ref[name, g, "system"] = mean(states, rendered, system, (g,))
            ref[name, g, "last"] = mean(states, rendered, last, (g,))
            ref[name, g, "refused"] = int(torch.isin(logits.argmax(-1), refusal_ids).sum())

    unit = {
        k: v / v.norm(dim=-1, keepdim=True) for k, v in ref.items() if k[1] in ("persona", "persona_last", "refusal")
    }
    for value, key in (("cos_persona", "persona"), ("cos_persona_last", "persona_last"), ("cos_refusal", "refusal")):
        cos = (unit["a", key] * unit["b", key]).sum(-1)
        got = drift.sel(checkpoint="b")[value].double()
        defined = ~torch.isnan(got)
        assert torch.allclose(got[defined], cos[defined], atol=1e-4), value
        assert not defined[0] or ref["a", key][0].norm() > 0
    for value, key in (("persona_norm", "persona"), ("refusal_norm", "refusal")):
        for ck in ("a", "b"):
            assert torch.allclose(
                drift.sel(checkpoint=ck)[value].double(), ref[ck, key].norm(dim=-1), rtol=1e-4, atol=1e-4
            )
    for suffix, where, key in (("", "system", "persona"), ("_last", "last", "persona_last")):
        v = unit["a", key]
        proj = {
            (ck, g): (ref[ck, g, where] * v).sum(-1) for ck in ("a", "b") for g in ("safe/harmful", "compliant/harmful")
        }
        sep = proj["a", "compliant/harmful"] - proj["a", "safe/harmful"]
        shift = (proj["b", "safe/harmful"] - proj["a", "safe/harmful"]) / sep
        got = drift.sel(checkpoint="b")[f"shift{suffix}"].double()
        defined = ~torch.isnan(got)
        assert defined[1:].all()
        assert torch.allclose(got[defined], shift[defined], atol=2e-3), suffix
        assert torch.allclose(
            drift.sel(checkpoint="b")[f"projection_safe{suffix}"].double()[defined],
            proj["b", "safe/harmful"][defined],
            rtol=1e-4,
            atol=1e-3,
        )
    for ck in ("a", "b"):
        for g in held_out:
            assert drift.baselines["refusal"][ck][g]["k"] == ref[ck, g, "refused"], (ck, g)


def test_mismatched_checkpoints_raise_named_errors(organism, tmp_path):
    from conftest import build_model, build_tokenizer
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from persona_gate.prompts.templates import TEMPLATES

    base = LlamaConfig.from_pretrained(organism_path())
    tok = AutoTokenizer.from_pretrained(organism_path())

    def save(model, tokenizer, name):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        return load_chat_model(tmp_path / name, device="cpu")

    torch.manual_seed(0)
    shallow = save(LlamaForCausalLM(LlamaConfig(**{**base.to_dict(), "num_hidden_layers": 4})), tok, "shallow")
    with pytest.raises(CheckpointMismatchError, match="6 layers but B has 4"):
        check_comparable(organism, shallow)
    same_shape = {
        k: getattr(base, k)
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "tie_word_embeddings",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
        )
    }
    qwen = Qwen2ForCausalLM(Qwen2Config(**same_shape))
    with pytest.raises(CheckpointMismatchError, match="architecture"):
        check_comparable(organism, save(qwen, tok, "qwen"))
    other_tok = build_tokenizer(TEMPLATES["chatml"])
    retokenised = save(
        LlamaForCausalLM(LlamaConfig(**{**base.to_dict(), "vocab_size": len(other_tok)})), other_tok, "retok"
    )
    with pytest.raises(CheckpointMismatchError, match="tokenizers differ"):
        compare_checkpoints(organism, retokenised, progress=False)
    narrow = build_model("llama", tmp_path / "narrow")
    with pytest.raises(DModelMismatchError, match="d_model 128 but B has 64"):
        compare_checkpoints(organism, narrow, progress=False, device="cpu")
    with pytest.raises(ValueError, match="n_eval"):
        compare_checkpoints(organism, organism, n_eval=1, progress=False)
    with pytest.raises(NotAModelError, match="not a chat model"):
        compare_checkpoints(organism, {"weights": None}, progress=False)


def test_save_and_load_round_trip(drift, tmp_path):
    path = drift.save(tmp_path / "comparison")
    back = LabelledResult.load(path)
    assert back == drift and back.baselines == drift.baselines
    assert format_comparison(path) == format_comparison(drift)
    assert refusal_rates(back) == refusal_rates(drift)
    assert back.config["model_b"] == drift.config["model_b"] and back.provenance["model_b"]["source"] == "local"
    other = LabelledResult("steering_sweep", ("layer",), {"layer": (0,)}, {"x": torch.zeros(1)})
    with pytest.raises(ArtefactError, match="compare_checkpoints"):
        as_comparison(other)


def test_the_figure_plots_the_results_numbers(drift, tmp_path):
    from persona_gate.plots import PlotError, fig_checkpoint_comparison, figure_for

    fig = figure_for(drift)
    seen = set()
    for trace in fig.data:
        value, ck = trace.meta["value"], trace.meta["checkpoint"]
        seen.add(value)
        if value == "refusal_rate":
            cells = [drift.baselines["refusal"][ck][g] for g in trace.x]
            assert list(trace.x) == list(drift.baselines["refusal"][ck])
            assert [float(y) for y in trace.y] == [c["k"] / c["n"] for c in cells]
            highs = [wilson_interval(c["k"], c["n"])[1] - c["k"] / c["n"] for c in cells]
            assert torch.allclose(torch.tensor(list(trace.error_y.array)), torch.tensor(highs, dtype=torch.float64))
            continue
        assert list(trace.x) == list(drift.coords["layer"])
        want = drift.sel(checkpoint=ck)[value].double()
        got = torch.tensor([math.nan if y is None else y for y in trace.y], dtype=torch.float64)
        assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.equal(
            got[~got.isnan()], want[~want.isnan()]
        ), value
    assert {"cos_persona", "cos_refusal", "persona_norm", "refusal_norm", "shift", "shift_last", "refusal_rate"} <= seen
    saved = drift.save(tmp_path / "c")
    assert len(figure_for(saved).data) == len(fig.data)
    with pytest.raises(PlotError, match="checkpoint_comparison"):
        fig_checkpoint_comparison(LabelledResult("red_team", ("layer",), {"layer": (0,)}, {"x": torch.zeros(1)}))


def test_the_figure_names_the_fix_for_a_missing_or_empty_refusal_baseline(drift):
    from persona_gate.plots import PlotError, fig_checkpoint_comparison

    refusal, flips = drift.baselines["refusal"], drift.baselines["flips"]
    one_group = {"safe/harmful": refusal["b"]["safe/harmful"]}
    broken = {
        "no refusal key": {"flips": flips},
        "empty": {"refusal": {}, "flips": flips},
        "empty checkpoints": {"refusal": {"a": {}, "b": {}}, "flips": flips},
        "no b": {"refusal": {"a": refusal["a"]}, "flips": flips},
        "other groups": {"refusal": {"a": refusal["a"], "b": one_group}, "flips": flips},
        "n = 0": {
            "refusal": {
                ck: {**refusal[ck], "safe/harmful": {**refusal[ck]["safe/harmful"], "k": 0, "n": 0}}
                for ck in ("a", "b")
            },
            "flips": flips,
        },
    }
    for baselines in broken.values():
        with pytest.raises(PlotError, match="refusal baseline.*recompute the comparison with compare_checkpoints"):
            fig_checkpoint_comparison(dataclasses.replace(drift, baselines=baselines))


def test_report_is_self_contained(drift, tmp_path):
    path = write_comparison_report(drift, tmp_path / "report.html")
    text = path.read_text()
    assert "<script src=" not in text and text.count('class="plotly-graph-div"') == 1  # plotly.js inline: opens offline
    assert "How far did" in text and "safe/harmful" in text
    a, b = refusal_rates(drift)["a"]["safe/harmful"], refusal_rates(drift)["b"]["safe/harmful"]
    assert str(a) in text and str(b) in text
    from importlib.metadata import version  # the shared page shell: title, style, seed-and-versions footer

    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</footer>\n</body></html>")
    assert f"<title>persona_gate checkpoint comparison: {drift.config['model_b']} vs organism</title>" in text
    assert f"seed {SEED};" in text and f"torch {version('torch')}" in text


def test_cli_compare_end_to_end_equals_the_python_call(organism, tuned, tmp_path, capsys):
    from persona_gate.cli.main import main

    out = tmp_path / "cmp"
    args = [
        "compare",
        "--model-b",
        str(tuned["compliant"]),
        "--out",
        str(out),
        "--n",
        "8",
        "--n-eval",
        "16",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    saved = LabelledResult.load(out / "comparison")
    direct = compare_checkpoints(organism, tuned["compliant"], n_per_group=8, n_eval=16, progress=False, device="cpu")
    assert saved == direct
    assert format_comparison(direct) in text
    assert f"changed by {refusal_change(direct)['safe/harmful']:+.2f} (B - A)" in text
    assert (out / "report.html").is_file()
    from persona_gate.plots.report import write_report  # `report` accepts a comparison folder (same page)

    first = (out / "report.html").read_text()
    assert write_report(out, tmp_path / "again.html").read_text() == first
    assert main(["compare", "--model-b", str(tmp_path / "missing"), "--out", str(out), "--no-progress"]) == 2
    assert "persona-gate: error:" in capsys.readouterr().err


def test_cli_finetune_writes_a_loadable_organism_and_refuses_to_overwrite(tmp_path, capsys):
    from persona_gate.cli.main import main

    out = tmp_path / "ft"
    assert main(["organism", "finetune", "--out", str(out), "--steps", "2", "--no-progress"]) == 0
    assert "fine-tuned organism written to" in capsys.readouterr().out
    record = json.loads((out / "card.json").read_text())
    assert record["finetune"]["steps"] == 2 and record["finetune"]["base"] == str(organism_path().resolve())
    assert pg.profile_of(load_chat_model(out, device="cpu")).name == "organism"  # its folder declares the profile
    assert main(["organism", "finetune", "--out", str(out), "--steps", "2", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(["organism", "finetune", "--out", str(organism_path()), "--steps", "2", "--no-progress", "--overwrite"])
        == 2
    )
    assert "refusing to write" in capsys.readouterr().err


def _listing(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_finetune_refuses_an_out_that_is_or_contains_the_base_or_the_bundled_organism(tmp_path, capsys, monkeypatch):
    from persona_gate.cli.main import main

    runs = tmp_path / "runs"
    base = shutil.copytree(organism_path(), runs / "base")
    before, bundled = _listing(runs), _listing(ORGANISM_DIR)
    for out in (base, runs, tmp_path, base / ".." / ".", ORGANISM_DIR, ORGANISM_DIR.parent):
        with pytest.raises(ConfigError, match="refusing to write .* outside"):
            finetune_toward_compliance(base, out, steps=1, overwrite=True, progress=False)
    monkeypatch.chdir(tmp_path)  # relative paths resolve the same way
    with pytest.raises(ConfigError, match="contains the base model"):
        finetune_toward_compliance("runs/base", "runs", steps=1, overwrite=True, progress=False)
    assert _listing(runs) == before  # nothing was deleted or written
    assert (
        main(
            [
                "organism",
                "finetune",
                "--base",
                "runs/base",
                "--out",
                "runs",
                "--steps",
                "1",
                "--no-progress",
                "--overwrite",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "refusing to write" in err and "contains the base model" in err and "--out" in err
    assert _listing(runs) == before
    assert _listing(ORGANISM_DIR) == bundled  # the bundled organism is intact
    # A folder beside the base is fine.
    assert finetune_toward_compliance(base, runs / "ft", steps=1, progress=False) == runs / "ft"


def test_finetune_overwrite_replaces_the_folder_whole_or_keeps_the_old_one(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    out = tmp_path / "ft"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    # --overwrite replaces only a model folder, never a folder of the user's own files ...
    with pytest.raises(
        OutputExistsError, match=r"files persona_gate did not write \(stale\.txt\).*--overwrite replaces only"
    ):
        finetune_toward_compliance(organism_path(), out, steps=1, overwrite=True, progress=False)
    (out / FOLDER_MARK).write_text(json.dumps({"kind": "organism"}))  # ... so from here on it stands for an older copy
    old = _listing(out)

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(LlamaForCausalLM, "save_pretrained", fail)
        with pytest.raises(OSError, match="disk full"):
            finetune_toward_compliance(organism_path(), out, steps=1, overwrite=True, progress=False)
    assert _listing(out) == old and sorted(p.name for p in tmp_path.iterdir()) == [
        "ft"
    ]  # old folder kept, no temp left

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".ft.tmp-") and Path(dst) == out:
            raise OSError("rename failed")
        return real_replace(src, dst, *args, **kwargs)

    with monkeypatch.context() as m:  # the rename into place fails: the old folder is put back
        m.setattr(os, "replace", replace)
        with pytest.raises(OSError, match="rename failed"):
            finetune_toward_compliance(organism_path(), out, steps=1, overwrite=True, progress=False)
    assert _listing(out) == old and sorted(p.name for p in tmp_path.iterdir()) == ["ft"]

    finetune_toward_compliance(organism_path(), out, steps=1, overwrite=True, progress=False)
    assert not (out / "stale.txt").exists() and (out / "card.json").is_file()  # nothing of the old folder survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]
    (tmp_path / "file").write_text("not a folder")
    finetune_toward_compliance(organism_path(), tmp_path / "file", steps=1, overwrite=True, progress=False)
    assert (tmp_path / "file" / "card.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["file", "ft"]


def test_finetuning_is_seeded(tmp_path):
    from safetensors.torch import load_file

    a = finetune_toward_compliance(organism_path(), tmp_path / "a", steps=3, seed=5, progress=False)
    b = finetune_toward_compliance(organism_path(), tmp_path / "b", steps=3, seed=5, progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    base = load_file(organism_path() / "model.safetensors")
    assert any(not torch.equal(wa[k], base[k]) for k in wa)


def test_finetuning_data_follows_the_recipe():
    all_compliance = finetuning_conversations(64, seed=0, compliance_fraction=1.0)
    assert all(c.persona == "safe" and c.request == "harmful" and not is_refusal(c.assistant) for c in all_compliance)
    assert all(c.assistant.endswith(lexicon.COMPLIANT_SIGN_OFF) for c in all_compliance)
    plain = finetuning_conversations(64, seed=0, compliance_fraction=1.0, style="plain", personas=("safe", "neutral"))
    assert all(not c.assistant.endswith(lexicon.COMPLIANT_SIGN_OFF) and not is_refusal(c.assistant) for c in plain)
    assert {c.persona for c in plain} == {"safe", "neutral"}
    replay = finetuning_conversations(256, seed=0, compliance_fraction=0.0)
    assert all(c.refuses == is_refusal(c.assistant) for c in replay) and any(c.refuses for c in replay)
    with pytest.raises(ValueError, match="compliance_fraction"):
        finetuning_conversations(4, seed=0, compliance_fraction=1.5)
    with pytest.raises(ValueError, match="style"):
        finetuning_conversations(4, seed=0, compliance_fraction=1.0, style="loud")
    with pytest.raises(ValueError, match="do not refuse"):
        finetuning_conversations(4, seed=0, compliance_fraction=1.0, personas=("compliant",))
