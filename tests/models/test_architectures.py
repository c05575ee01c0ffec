"""The architecture matrix: every tiny model of tests/archs.py through the adapter, end to end.

The per-architecture checks that live with their feature (directions == naive HF in
test_directions, batched == one-at-a-time in test_activations, steering and ablation in
test_interventions, patching == TransformerLens's get_act_patch_resid_pre in test_patching) run
over the same matrix through the ``arch`` fixture. This module adds what only the adapter makes
possible: the bridge's own head with soft-capping against a fresh Hugging Face model, block
re-runs on unequal-length persona pairs against a hooked full forward, KV-cached generation under
an intervention, and ``persona-gate run`` from the command line.
"""

from __future__ import annotations

import json

import pytest
import torch

import persona_gate as pg
from persona_gate.cli.main import main
from persona_gate.errors import UnsupportedModelError
from persona_gate.experiments.patching import align
from persona_gate.models import adapter
from persona_gate.results import LabelledResult

TOKENS = [5, 17, 40]


def _logodds(logits: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(logits.double(), -1)
    p = lp[..., TOKENS].exp().sum(-1)
    return torch.log(p) - torch.log1p(-p)


def test_the_bridge_declares_a_head_that_reproduces_a_fresh_hf_model(tiny, tiny_model_dirs, arch):
    from transformers import AutoModelForCausalLM

    adapter.check_supported(tiny, "hooks", "blocks", "replay")
    rp = pg.render_all(tiny.tokenizer, pg.standard_prompts(n_per_group=1))[0]
    ids = torch.tensor([rp.input_ids])
    last = f"blocks.{tiny.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        _, cache = tiny.run_with_cache(ids, names_filter=[last])
        ours = adapter.head_logits(tiny, cache[last][:, -1])
        hf = AutoModelForCausalLM.from_pretrained(
            tiny_model_dirs[arch], attn_implementation="eager", dtype=torch.float32
        )
        theirs = hf(ids).logits[:, -1]  # an independent model: HF's own norm, head and soft-cap
    assert (ours - theirs).abs().max() <= 1e-4
    assert (adapter.last_logits(tiny, ids) - theirs).abs().max() <= 1e-4


def _naive_patch(model, src_rp, tgt_rp, slot, layer: int) -> float:
    """The target run with one slot of the source patched in at resid_pre.layer: a full hooked forward."""
    name = f"blocks.{layer}.hook_resid_pre"
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([src_rp.input_ids]), names_filter=[name])
    src = cache[name][0]

    def hook(x, hook):
        x = x.clone()
        s, t = list(slot.source), list(slot.target)
        if len(s) == len(t):
            x[0, t] = src[s]
        else:  # a block of another length: its mean moved to the source block's mean
            x[0, t] += src[s].mean(0) - x[0, t].mean(0)
        return x

    with torch.no_grad():
        logits = model.run_with_hooks(torch.tensor([tgt_rp.input_ids]), fwd_hooks=[(name, hook)], use_cache=False)
    return float(_logodds(logits[:, -1])[0])


def test_patching_an_unequal_length_persona_pair_equals_a_hooked_full_forward(tiny, arch):
    grid = pg.standard_prompts(n_per_group=2, seed=1)
    safe = [p for p in grid if p.group == "safe/harmful"][:1]
    comp = [p for p in grid if p.group == "compliant/harmful"][:1]
    s_rp, t_rp = pg.render_all(tiny.tokenizer, safe + comp)
    assert len(s_rp) != len(t_rp), "the two personas should differ in length"
    layer = 1
    r = pg.activation_patching(tiny, [s_rp], [t_rp], TOKENS, layers=[layer], min_gap=0.0, progress=False)
    slots = {sl.label: sl for sl in align(tiny.tokenizer, s_rp, t_rp, "roles")}
    assert list(r.coords["position"]) == list(slots)  # positions="auto" chose roles
    for label in ("[system]", "[user]"):
        got = float(r.sel(position=label)["logodds"][0, 0])
        assert abs(got - _naive_patch(tiny, s_rp, t_rp, slots[label], layer)) <= 1e-4, label


def test_kv_cached_generation_equals_uncached_under_steering(tiny, arch):
    pr = pg.fit_persona_and_refusal(tiny, pg.standard_prompts(n_per_group=3), progress=False)
    prompts = pg.standard_prompts(n_per_group=2, split="test")[:3]
    outs = {}
    for kv in (True, False):
        with pg.apply(tiny, pg.Steer(pr.persona, alpha=3.0, layers=[1], scope="both")) as report:
            outs[kv] = pg.generate(tiny, prompts, max_new_tokens=6, batch_size=3, use_kv_cache=kv, progress=False)
        assert report.calls  # the hook fired during generation
    assert [g.token_ids for g in outs[True]] == [g.token_ids for g in outs[False]]
    with pg.apply(tiny, pg.Steer(pr.persona, alpha=0.0, layers=[1])):
        plain = pg.generate(tiny, prompts, max_new_tokens=6, batch_size=3, progress=False)
    assert [g.token_ids for g in plain] == [
        g.token_ids for g in pg.generate(tiny, prompts, max_new_tokens=6, progress=False)
    ]


def test_persona_gate_run_end_to_end(tiny_model_dirs, arch, tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(
        f'model = "{tiny_model_dirs[arch]}"\nn_fit = 4\nn_eval = 4\nalphas = [0.0, 4.0]\nrandom_seeds = 1\n'
        'patch_examples = 2\nwindow_width = 2\nrefusal_phrases = ["I cannot help", "Sorry"]\n'
    )
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    sweep = LabelledResult.load(out / "steering_sweep")
    assert summary["n_layers"] == 3 and summary["n_prompts_per_group"] == {"fit": 4, "eval": 4}
    assert tuple(sweep.coords["alpha"]) == (0.0, 4.0) and summary["gate_layers"] == [
        row["layer"] for row in pg.gate_layers(LabelledResult.load(out / "patching")) if row["gate"]
    ]
    patching = LabelledResult.load(out / "patching")
    assert patching.sizes["layer"] == 3 and patching.sizes["example"] == 2
    assert "report" in capsys.readouterr().out


def test_a_model_without_blocks_is_refused_before_any_work(tiny_models):
    tiny = tiny_models["llama"]

    class NoBlocks:
        cfg, tokenizer = tiny.cfg, tiny.tokenizer

        def hooks(self, *a, **k):
            return tiny.hooks(*a, **k)

    assert adapter.missing_needs(NoBlocks(), ["hooks", "blocks", "replay"]) == ["blocks", "replay"]
    with pytest.raises(UnsupportedModelError, match="a list of transformer blocks"):
        adapter.check_supported(NoBlocks(), "blocks", "replay", what="activation patching")
