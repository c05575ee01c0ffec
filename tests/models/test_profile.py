"""Model profiles: decided once, carried with the model, declared by its folder, overridable."""

from __future__ import annotations

import json
import shutil

import pytest

import persona_gate as pg
from persona_gate.errors import ArtefactError
from persona_gate.models.loading import organism_dir
from persona_gate.models.profile import PROFILE_FILE, profile_in_folder
from persona_gate.organism import lexicon
from persona_gate.organism.prompt_sets import requests


def test_the_organism_declares_its_own_profile_and_a_copy_keeps_it(tmp_path):
    copy = shutil.copytree(organism_dir(), tmp_path / "copy")
    for model in (pg.load_chat_model("organism", device="cpu"), pg.load_chat_model(copy, device="cpu")):
        profile = pg.profile_of(model)
        assert profile.name == "organism" and profile.refusal_phrases == tuple(lexicon.REFUSALS)
        # its own grammar's requests, not persona_gate's English sets
        grid = pg.standard_prompts(model=model, n_per_group=4, split="test")
        assert {p.user for p in grid if p.group == "safe/harmful"} <= {
            r.text for r in requests("harmful", "test", 96, 0)
        }
        assert pg.attacks_for(model)[1].name == "just-answer"


def test_a_model_booted_without_persona_gates_loader_finds_its_folders_profile():
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(organism_dir()), device="cpu")
    assert pg.profile_of(bridge).name == "organism"


def test_other_models_get_the_open_defaults_and_a_user_profile_wins(tiny_models, tiny_model_dirs):
    model = tiny_models["qwen2"]
    assert pg.profile_of(model).name == "open" and pg.profile_of(model).refusal_phrases is None
    assert pg.attacks_for(model)[1].name == "no-warnings"
    mine = pg.ModelProfile(name="mine", refusal_phrases=("I cannot help",))
    loaded = pg.load_chat_model(tiny_model_dirs["qwen2"], device="cpu", profile=mine)
    assert pg.profile_of(loaded) is mine
    from persona_gate.experiments import RefusalScorer

    want = pg.metrics.refusal_token_ids(loaded.tokenizer, ["I cannot help"])
    assert list(RefusalScorer.for_model(loaded).token_ids) == want


def test_profile_files_round_trip_and_bad_ones_are_named(tmp_path):
    mine = pg.ModelProfile(
        name="mine", refusal_phrases=("I won't",), attacks=({"name": "plain", "family": "none", "user": "{request}"},)
    )
    mine.save(tmp_path)
    back = profile_in_folder(tmp_path)
    assert (back.name, back.refusal_phrases, back.prompt_sets.name) == ("mine", ("I won't",), "open")
    assert back.attacks == ({"name": "plain", "family": "none", "user": "{request}"},)
    assert profile_in_folder(tmp_path / "nowhere") is None
    data = json.loads((tmp_path / PROFILE_FILE).read_text())
    for edit, message in (
        ({"schema": 99}, "newer than 1; upgrade"),
        ({"kind": "other"}, "not a persona_gate model profile"),
        ({"prompt_sets": "klingon"}, "malformed.*unknown prompt sets"),
        ({"refusal_phrases": []}, "malformed"),
    ):
        (tmp_path / PROFILE_FILE).write_text(json.dumps({**data, **edit}))
        with pytest.raises(ArtefactError, match=message):
            profile_in_folder(tmp_path)
