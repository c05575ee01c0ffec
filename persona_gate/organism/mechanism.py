"""Mechanistic sanity of the organism: does the toolkit find the gate we trained in?

Run through persona_gate's own loading, direction fitting and interventions, on the organism's
own prompt sets (directions from the train split, effects measured on the held-out split).
Refusal is read from the first response token (greedy first token in the organism's refusal
openers, see :mod:`persona_gate.scoring.metrics`), which for this organism decides the whole reply.

Reported:

* ``cosine``: per layer, cos(persona at mean:system, refusal at last) and cos(persona at last,
  refusal at last) -- distinct directions should have |cos| clearly below 1;
* ``steering``: refusal rate of safe persona + harmful requests when the persona direction is
  added (``alpha`` x its raw norm) at one layer, for every layer x alpha;
* ``ablation``: refusal rate of compliant persona + harmful (and harmless) requests when the
  persona direction of one source layer is projected out at every layer, against a matched-norm
  random direction ablated the same way.

Example::

    report = mechanistic_sanity(load_chat_model(organism_path()), n=64)
    report["summary"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.contrasts import fit_persona_and_refusal, standard_prompts
from ..core.interventions import Ablate, Steer, apply
from ..scoring.metrics import first_token_logprobs, refusal_rate, refusal_token_ids
from . import lexicon, prompt_sets

DEFAULT_ALPHAS: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0)


def _grid(split: str, n: int, seed: int):
    return standard_prompts(
        harmful=prompt_sets.requests("harmful", split, n, seed),
        harmless=prompt_sets.requests("harmless", split, n, seed),
        safe=prompt_sets.personas("safe", split, seed=seed),
        compliant=prompt_sets.personas("compliant", split, seed=seed),
    )


def mechanistic_sanity(
    model: Any, *, n: int = 64, seed: int = 0, alphas: Sequence[float] = DEFAULT_ALPHAS, progress: bool = False
) -> dict[str, Any]:
    """Cosines, persona steering and persona ablation with a random control (see module doc)."""
    pr = fit_persona_and_refusal(model, _grid("train", n, seed), progress=progress, seed=seed)
    test = _grid("test", n, seed)
    by_group = {
        g: [p for p in test if p.group == g]
        for g in ("safe/harmful", "safe/harmless", "compliant/harmful", "compliant/harmless")
    }
    ids = refusal_token_ids(model.tokenizer, lexicon.REFUSALS)

    def rate(group: str, *specs: Any) -> float:
        with apply(model, *specs):
            return round(refusal_rate(first_token_logprobs(model, by_group[group]), ids), 4)

    layers = list(range(1, model.cfg.n_layers))  # resid_pre.0 is the token embedding
    baseline = {g: rate(g) for g in by_group}
    steering = {
        str(layer): {str(a): rate("safe/harmful", Steer(pr.persona, alpha=a, layers=[layer])) for a in alphas}
        for layer in layers
    }
    random = pr.persona.random_like(seed)
    ablation = {
        str(layer): {
            "harmful": rate("compliant/harmful", Ablate(pr.persona, source_layer=layer)),
            "harmless": rate("compliant/harmless", Ablate(pr.persona, source_layer=layer)),
            "random_harmful": rate("compliant/harmful", Ablate(random, source_layer=layer)),
        }
        for layer in layers
    }
    rows = pr.rows()
    best_steer = min(((lay, a) for lay in steering for a in steering[lay]), key=lambda k: steering[k[0]][k[1]])
    best_ablate = max(ablation, key=lambda lay: ablation[lay]["harmful"])
    return {
        "n_per_group": n,
        "seed": seed,
        "refusal_tokens": [model.tokenizer.decode([i]) for i in ids],
        "persona_position": pr.persona.position,
        "refusal_position": pr.refusal.position,
        "cosine": {
            str(r["layer"]): {
                "persona_refusal": round(r["cos_persona_refusal"], 4),
                "persona_last_refusal": round(r["cos_persona_last_refusal"], 4),
            }
            for r in rows
        },
        "baseline": baseline,
        "steering": steering,
        "ablation": ablation,
        "summary": {
            "baseline_safe_harmful": baseline["safe/harmful"],
            "baseline_compliant_harmful": baseline["compliant/harmful"],
            "best_steering": {
                "layer": int(best_steer[0]),
                "alpha": float(best_steer[1]),
                "refusal": steering[best_steer[0]][best_steer[1]],
            },
            "best_ablation": {"source_layer": int(best_ablate), **ablation[best_ablate]},
            "max_abs_cos_persona_refusal_mid_late": max(
                abs(r["cos_persona_refusal"]) for r in rows if r["layer"] >= model.cfg.n_layers // 2
            ),
        },
    }
