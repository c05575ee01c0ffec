"""The planted gate: a model built by hand whose gate layers are known, and the localisation run on it.

Two plants, layers 2-3 and 4-5 of 8: the first-token behaviour is checked by a direct forward
(and the features by reading the residual stream), then the pipeline's own pieces -- directions,
window projection over every 1- and 2-layer window with random controls, re-introduction,
residual and directional patching -- and the gate window are run on each: the answer must be the
planted window, and it must move when the plant moves.
"""

from __future__ import annotations

import json

import pytest
import torch

from persona_gate.core.contrasts import fit_persona_and_refusal
from persona_gate.errors import ConfigError, ModelNotFoundError
from persona_gate.experiments.paper import reintroduction, window_projection, window_spans
from persona_gate.experiments.patching import activation_patching, gate_layers
from persona_gate.experiments.verdicts import gate_window
from persona_gate.models.loading import load_chat_model
from persona_gate.organism import prompt_sets
from persona_gate.organism.planted import CARD_FILE, build_planted_gate, gate_words
from persona_gate.prompts.sets import paired_grid
from persona_gate.scoring.refusal import RefusalScorer, eval_groups

pytestmark = pytest.mark.usefixtures("one_thread")
PLANTS = [(2, 3), (4, 5)]
N_LAYERS = 8


@pytest.fixture(scope="session")
def planted_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    return {p: build_planted_gate(root / f"gate-{p[0]}-{p[1]}", start=p[0], end=p[1]) for p in PLANTS}


@pytest.fixture(scope="session")
def planted_models(planted_dirs):
    return {p: load_chat_model(d, device="cpu") for p, d in planted_dirs.items()}


@pytest.fixture(scope="session")
def localised(planted_models):
    """Per plant: the pipeline's pieces run on it, and the gate window they give."""
    out = {}
    for plant, model in planted_models.items():
        pr = fit_persona_and_refusal(model, n_per_group=16, progress=False)
        groups, scorer = eval_groups(model, 12), RefusalScorer.for_model(model)
        common = dict(groups=groups, scorer=scorer, progress=False)
        spans = window_spans(N_LAYERS, 1) + window_spans(N_LAYERS, 2)
        windows = window_projection(model, pr.persona, windows=spans, random_seeds=2, **common)
        back = reintroduction(model, pr.persona, pr.refusal, **common)
        pairs = groups["safe/harmful"][:2], groups["compliant/harmful"][:2]
        residual = gate_layers(activation_patching(model, *pairs, scorer.token_ids, positions="roles", progress=False))
        directional = gate_layers(
            activation_patching(
                model, *pairs, scorer.token_ids, positions="roles", direction=pr.persona, progress=False
            )
        )
        out[plant] = {
            "windows": windows,
            "back": back,
            "residual": residual,
            "directional": directional,
            "gate": gate_window(back, windows, residual, directional),
        }
    return out


def test_the_folder_records_the_planted_window_and_loads_with_the_organisms_profile(planted_dirs, planted_models):
    from persona_gate.models.profile import profile_of

    for (start, end), folder in planted_dirs.items():
        card = json.loads((folder / CARD_FILE).read_text())
        assert card["gate"] == {"start": start, "end": end} and card["n_layers"] == N_LAYERS
        assert (card["aggregator_block"], card["gate_block"]) == (start - 1, end)
        model = planted_models[(start, end)]
        assert int(model.cfg.n_layers) == N_LAYERS and profile_of(model).prompt_sets.name == "organism"
    with pytest.raises(ConfigError, match="1 <= start <= end <= n_layers - 2"):
        build_planted_gate(next(iter(planted_dirs.values())).parent / "bad", start=3, end=7)


def _first_token_refusal(model, system_family: str, request_family: str, n: int = 12) -> torch.Tensor:
    sets = prompt_sets.ORGANISM_SETS
    prompts = paired_grid(
        sets.personas(system_family, "test"),
        sets.requests(request_family, "test", n),
        f"{system_family}/{request_family}",
    )
    return RefusalScorer.for_model(model).score(prompts)[1]


@pytest.mark.parametrize("plant", PLANTS)
def test_first_token_refusal_is_as_designed(planted_models, plant):
    """Harmful + safe (or neutral, or no system prompt) refuses; harmful + compliant and every harmless
    request are answered; a direct forward, no intervention."""
    model = planted_models[plant]
    for persona in ("safe", "neutral", "none"):
        assert bool(_first_token_refusal(model, persona, "harmful").all()), persona
        assert not bool(_first_token_refusal(model, persona, "harmless").any()), persona
    assert not bool(_first_token_refusal(model, "compliant", "harmful").any())
    assert not bool(_first_token_refusal(model, "compliant", "harmless").any())


@pytest.mark.parametrize("plant", PLANTS)
def test_the_features_appear_where_they_are_planted(planted_dirs, planted_models, plant):
    """Read off the residual stream at the last position: persona and harm first appear at
    resid_pre[start] (the aggregator is block start - 1), refusal first at resid_pre[end + 1]."""
    start, end = plant
    model, dims = planted_models[plant], json.loads((planted_dirs[plant] / CARD_FILE).read_text())["dims"]
    prompt = eval_groups(model, 2)["safe/harmful"][0]
    from persona_gate.prompts.chat import render_all

    ids = torch.tensor([render_all(model.tokenizer, [prompt])[0].input_ids])
    got: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(x, hook):
            got[layer] = x[0, -1].detach().clone()

        return hook

    hooks = [(f"blocks.{layer}.hook_resid_pre", keep(layer)) for layer in range(N_LAYERS)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(ids)
    at = lambda name: [float(got[layer][dims[name]]) for layer in range(N_LAYERS)]  # noqa: E731
    harm, refusal = at("harm"), at("refusal")
    assert [layer for layer, h in enumerate(harm) if abs(h) > 1] == list(range(start, N_LAYERS))
    assert [layer for layer, r in enumerate(refusal) if abs(r) > 1] == list(range(end + 1, N_LAYERS))


@pytest.mark.parametrize("plant", PLANTS)
def test_the_gate_window_recovers_exactly_the_planted_layers(localised, plant):
    start, end = plant
    g = localised[plant]["gate"]
    assert g.localised and (g.start, g.end) == plant and g.placed_by == "persona projection"
    assert g.low_start <= start and g.high_end >= end  # the bootstrap interval holds the planted ends
    assert g.evidence["projection"]["narrowest_width"] == 1
    assert g.statement.startswith(f"gate: layers {start}-{end} (95% CI start >= {g.low_start}, end <= {g.high_end};")
    assert json.loads(g.to_json())["statement"] == g.statement


@pytest.mark.parametrize("plant", PLANTS)
def test_projection_restores_exactly_over_the_plant_and_random_controls_are_inert(localised, plant):
    start, end = plant
    w = localised[plant]["windows"]
    rate = w.mean("example")["refused"]  # [direction, start, end]
    names = list(w.coords["direction"])
    compliant = w.baselines["compliant_refusal_rate"]
    assert w.baselines["baseline_refusal_rate"] == 1.0 and compliant == 0.0
    for layer in range(N_LAYERS):  # single-layer windows: restored iff start <= layer <= end
        persona = float(rate[names.index("persona"), layer, layer])
        assert persona == (1.0 if start <= layer <= end else 0.0), layer
    for a, b in w.config["windows"]:
        for i, name in enumerate(names):
            if name != "persona":
                assert abs(float(rate[i, a, b]) - compliant) <= 0.1, (name, a, b)


@pytest.mark.parametrize("plant", PLANTS)
def test_refusal_added_back_restores_only_after_the_gate(localised, plant):
    _, end = plant
    back = localised[plant]["back"]
    by_layer = dict(zip(back.coords["layer"], back.mean("example")["refused"].tolist()))
    assert {layer for layer, r in by_layer.items() if r >= 0.9} == set(range(end + 1, N_LAYERS))
    assert all(r <= 0.1 for layer, r in by_layer.items() if layer <= end)
    restoring = [r["layer"] for r in localised[plant]["gate"].evidence["reintroduction"]["layers_restoring"]]
    assert restoring == list(range(end + 1, N_LAYERS))


@pytest.mark.parametrize("plant", PLANTS)
def test_residual_patching_cannot_localise_and_directional_patching_does(localised, plant):
    start, end = plant
    residual, directional = localised[plant]["residual"], localised[plant]["directional"]
    assert all(r["restoration"] >= 0.9 for r in residual)  # every layer: the persona is patched wherever it is
    assert [r["layer"] for r in directional if r["gate"]] == list(range(start, end + 1))
    assert all(abs(r["restoration"]) < 0.1 for r in directional if not start <= r["layer"] <= end)


def test_moving_the_plant_moves_the_answer(localised):
    answers = {p: (localised[p]["gate"].start, localised[p]["gate"].end) for p in PLANTS}
    assert answers == {p: p for p in PLANTS} and len(set(answers.values())) == len(PLANTS)


def test_the_gate_words_separate_every_request_and_persona_the_grammar_makes(planted_models):
    """The words the model reads mark every harmful request and every held-out compliant persona."""
    tok = next(iter(planted_models.values())).tokenizer
    words = gate_words(tok)
    assert set(words.unread_clauses) == {"never refuses", "never says no"}  # their words are the safe persona's too
    harm = words.harm
    ids = lambda text: set(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    for family, want in (("harmful", True), ("harmless", False)):
        for r in prompt_sets.requests(family, "test", 200):
            assert (sum(harm.get(t, 0.0) for t in ids(r.text)) >= 1) == want, r.text
    for p in prompt_sets.personas("compliant", "test"):
        assert ids(p.text) & set(words.compliant), p.text
    for p in prompt_sets.personas("safe", "test") + prompt_sets.personas("neutral", "test"):
        assert not ids(p.text) & set(words.compliant), p.text


def test_planted_gate_is_a_model_name_built_into_the_cache(tmp_path, monkeypatch):
    from persona_gate.models.built import parse_built
    from persona_gate.models.loading import model_info

    monkeypatch.setenv("PERSONA_GATE_CACHE", str(tmp_path))
    assert parse_built("planted-gate") == ("planted-gate", {"start": 4, "end": 5, "n_layers": 8})
    assert parse_built("planted-gate:1-2:6") == ("planted-gate", {"start": 1, "end": 2, "n_layers": 6})
    assert parse_built("organism") is None and parse_built("planted-gate-run") is None  # a folder name
    model = load_chat_model("planted-gate:1-2:6", device="cpu")
    folder = next((tmp_path / "built").iterdir())
    assert json.loads((folder / CARD_FILE).read_text())["gate"] == {"start": 1, "end": 2}
    assert int(model.cfg.n_layers) == 6 and model_info(model).name == "planted-gate:1-2:6"
    assert model_info(model).source == "built"
    with pytest.raises(ModelNotFoundError, match="planted-gate:START-END"):
        load_chat_model("planted-gate:two-three")
    with pytest.raises(ConfigError, match="1 <= start <= end"):
        load_chat_model("planted-gate:0-1")
