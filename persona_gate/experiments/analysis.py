"""Where the persona lives and how it relates to refusal: extraction sites, geometry, traits, selection.

* :func:`extraction_sites` fits the persona direction at several token positions (last token,
  post-instruction tokens, the system-prompt mean, the generated-response mean) and measures, per
  position and layer, how far steering with it lowers refusal and how far ablating it restores
  refusal -- the site that carries the gate is the one whose ablation works.
* :func:`geometry`: per-layer cosine of persona and refusal, and every (persona x request)
  group's projections onto both.
* :func:`trait_directions`: the eight relational traits (pos - neg instructions as system
  prompts) per layer, and their cosines with the refusal and compliant-persona directions.
* :func:`select_steering`: choose the persona direction's layer and alpha as Arditi et al.
  choose theirs -- KL on harmless prompts <= ``kl_max``, not in the last ``exclude_last`` of
  the layers, refusal must drop by ``min_drop`` -- and return the whole candidates table.

Example::

    sites = extraction_sites(model, n=32)
    sites.sel(effect="ablation_refusal").values["rate"]      # [position, layer]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.contrasts import PersonaRefusal, standard_prompts
from ..core.directions import DirectionSet, fit_group_means
from ..core.interventions import Ablate, Steer
from ..grid import CellStore, GridSpec, MemoryStore, Scored, open_store, run_grid
from ..models.loading import provenance
from ..models.protocol import ChatModel
from ..prompts.chat import render_all
from ..prompts.positions import parse_position
from ..prompts.sets import TRAITS, ChatPrompt, load_trait
from ..results import LabelledResult
from ..scoring.metrics import KLFrom
from ..scoring.refusal import RefusalScorer
from ..sites import sites_for
from .paper import experiment_layers, experiment_setup

PERSONA_POSITIONS = ("last", "post_instruction[-2]", "mean:system", "mean:user", "mean:response")
_PERSONA_GROUPS = (("compliant/harmful", "compliant/harmless"), ("safe/harmful", "safe/harmless"))


def _with_responses(model: ChatModel, prompts: Sequence[ChatPrompt], max_new_tokens: int) -> list:
    from ..core.generation import generate

    rendered = render_all(model.tokenizer, prompts)
    outs = generate(model, rendered, max_new_tokens=max_new_tokens, progress=False)
    return [rp.with_response(g.token_ids) for rp, g in zip(rendered, outs) if g.token_ids]


def sites_grid(
    model: ChatModel,
    p: str,
    d: DirectionSet,
    groups: dict,
    scorer: RefusalScorer,
    layers: Sequence[int],
    alphas: Sequence[float],
) -> GridSpec:
    """One extraction position's cells: steering at each (layer, alpha) on safe/harmful; the layer's
    direction ablated at every layer on compliant/harmful and compliant/harmless."""
    every = range(int(model.cfg.n_layers))
    cells: dict[tuple, Scored] = {}
    for layer in layers:
        for a in alphas:
            cells[(p, "steer", layer, float(a))] = Scored("safe/harmful", (Steer(d, alpha=a, layers=[layer]),))
    for request in ("harmful", "harmless"):
        for layer in layers:
            cells[(p, "ablate", layer, request)] = Scored(
                f"compliant/{request}", (Ablate(d, layers=every, source_layer=layer),)
            )

    def derive(key: tuple, lp: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"rate": scorer.from_logprobs(lp)[1].float().mean()}

    prompts = {g: groups[g] for g in ("safe/harmful", "compliant/harmful", "compliant/harmless")}
    return GridSpec("extraction_sites", cells, prompts=prompts, derive=derive, desc="extraction sites")


def _site_directions(
    model: ChatModel,
    train: list[ChatPrompt],
    sites: list,
    pos: list[str],
    response_tokens: int,
    seed: int,
) -> tuple[DirectionSet, dict[str, DirectionSet]]:
    """The refusal direction (at the last token) and the persona direction fitted at each position
    of ``pos`` (``mean:response`` over the model's own replies of ``response_tokens`` tokens)."""
    plain = [p for p in pos if p != "mean:response"]
    means = fit_group_means(model, train, sites, list(dict.fromkeys(plain + ["last"])), progress=False, seed=seed)
    refusal = means.direction("refusal", "safe/harmful", "safe/harmless", "last")
    dirs = {p: means.direction(f"persona@{p}", *_PERSONA_GROUPS, p) for p in plain}
    if "mean:response" in pos:
        with_resp = _with_responses(model, train, response_tokens)
        resp_means = fit_group_means(model, with_resp, sites, ["mean:response"], progress=False, seed=seed)
        dirs["mean:response"] = resp_means.direction("persona@mean:response", *_PERSONA_GROUPS, "mean:response")
    return refusal, dirs


def _site_rates(
    model: ChatModel,
    pos: list[str],
    specs: dict[str, GridSpec],
    dirs: dict[str, DirectionSet],
    refusal: DirectionSet,
    scorer: RefusalScorer,
    layers: Sequence[int],
    alphas: Sequence[float],
    *,
    n_effects: int,
    store: CellStore | MemoryStore,
    progress: bool,
) -> torch.Tensor:
    """Run each position's grid (``specs``); ``[position, layer, effect]``: the lowest steered refusal over
    ``alphas``, the ablated refusal on harmful and harmless requests, the cosine with refusal."""
    bar = tqdm(total=sum(len(g.cells) for g in specs.values()), desc="extraction sites", disable=not progress)
    rate = torch.full((len(pos), len(layers), n_effects), float("nan"))
    try:
        for pi, p in enumerate(pos):
            got = run_grid(model, specs[p], store=store, bar=bar, **scorer.grid_options())
            for li, layer in enumerate(layers):
                rate[pi, li] = torch.stack(
                    [
                        min(got[(p, "steer", layer, float(a))]["rate"] for a in alphas),
                        got[(p, "ablate", layer, "harmful")]["rate"],
                        got[(p, "ablate", layer, "harmless")]["rate"],
                        (dirs[p].at(layer) @ refusal.at(layer)).float(),
                    ]
                )
    finally:
        bar.close()
    return rate


def extraction_sites(
    model: ChatModel,
    *,
    positions: Sequence[str] = PERSONA_POSITIONS,
    layers: Sequence[int] | None = None,
    alphas: Sequence[float] = (1.0, 2.0, 4.0),
    n: int = 32,
    response_tokens: int = 16,
    seed: int = 0,
    scorer: RefusalScorer | None = None,
    groups: dict | None = None,
    n_fit: int | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> LabelledResult:
    """Per (position, layer): steering effect, ablation effect and cosine with refusal.

    Directions are fitted on ``n_fit`` (default ``n``) train-split requests per group; the
    effects are scored on ``groups`` (default: ``n`` held-out prompts per group).
    ``checkpoint``: a folder keeping every finished (position, layer) cell, so a killed run
    refits the directions (seeded, identical) and computes only the cells it lacks."""
    groups, scorer = experiment_setup(model, n, seed, scorer, groups)
    layers = experiment_layers(model, layers)
    train = standard_prompts(model=model, n_per_group=n_fit or n, seed=seed)
    sites = sites_for(model, layers)
    pos = [str(parse_position(p)) for p in positions]
    refusal, dirs = _site_directions(model, train, sites, pos, response_tokens, seed)
    effects = ("steering_refusal", "ablation_refusal", "ablation_harmless_refusal", "cos_refusal")
    store = open_store(
        checkpoint,
        "extraction_sites",
        directions=[dirs[p] for p in pos],
        refusal=refusal,
        prompts={g: groups[g] for g in ("safe/harmful", "compliant/harmful", "compliant/harmless")},
        layers=list(layers),
        alphas=[float(a) for a in alphas],
        tokens=list(scorer.token_ids),
    )
    specs = {p: sites_grid(model, p, dirs[p], groups, scorer, layers, alphas) for p in pos}
    rate = _site_rates(
        model, pos, specs, dirs, refusal, scorer, layers, alphas, n_effects=len(effects), store=store, progress=progress
    )
    store.report()
    return LabelledResult(
        kind="extraction_sites",
        dims=("position", "layer", "effect"),
        coords={"position": tuple(pos), "layer": tuple(layers), "effect": effects},
        values={"rate": rate},
        baselines={g: round(float(scorer.score(groups[g])[1].float().mean()), 4) for g in groups},
        metric={"name": "refusal rate (first response token); cos_refusal is a cosine", "higher_means": "more refusal"},
        config={
            "alphas": list(alphas),
            "n": int(len(groups["safe/harmful"])),
            "n_fit": n_fit or n,
            "response_tokens": response_tokens,
            "seed": seed,
            "steering": "min refusal over alphas, safe/harmful",
            "ablation": "direction of this layer ablated at every layer",
        },
        provenance=provenance(model, seed=seed),
    )


@dataclass(frozen=True)
class Geometry:
    cosine: LabelledResult  # dims (layer,)
    projections: LabelledResult  # dims (group, example, layer)


def geometry(model: ChatModel, pr: PersonaRefusal, *, n: int = 16, split: str = "test", seed: int = 0) -> Geometry:
    """Per-layer cosines and per-group projections onto the persona and refusal directions."""
    from ..core.activations import cache_activations

    grid = standard_prompts(model=model, n_per_group=n, split=split, seed=seed)
    sites = list(pr.persona.sites)
    stores = {
        p: cache_activations(model, grid, sites, p, progress=False) for p in {pr.persona.position, pr.refusal.position}
    }
    groups = tuple(sorted(set(stores[pr.persona.position].groups)))
    m = min(stores[pr.persona.position].groups.count(g) for g in groups)
    proj = {}
    for name, d in (("persona_projection", pr.persona), ("refusal_projection", pr.refusal)):
        store = stores[d.position]
        p = d.project(store)  # [sample, layer]
        proj[name] = torch.stack([p[[i for i, g in enumerate(store.groups) if g == grp][:m]] for grp in groups])
    layers = tuple(s.layer for s in sites)
    rows = pr.rows()
    cosine = LabelledResult(
        kind="geometry_cosine",
        dims=("layer",),
        coords={"layer": layers},
        values={
            "persona_refusal": torch.tensor([r["cos_persona_refusal"] for r in rows]),
            "persona_last_refusal": torch.tensor([r["cos_persona_last_refusal"] for r in rows]),
        },
        config={"persona_position": pr.persona.position, "refusal_position": pr.refusal.position},
        provenance=provenance(model, seed=seed),
    )
    projections = LabelledResult(
        kind="geometry_projections",
        dims=("group", "example", "layer"),
        coords={"group": groups, "example": tuple(range(m)), "layer": layers},
        values=proj,
        config={
            "persona_position": pr.persona.position,
            "refusal_position": pr.refusal.position,
            "split": split,
            "n": m,
        },
        provenance=provenance(model, seed=seed),
    )
    return Geometry(cosine=cosine, projections=projections)


@dataclass(frozen=True)
class TraitResult:
    directions: dict[str, DirectionSet]
    cosines: LabelledResult  # dims (trait, layer): cos with refusal and persona, raw norm
    matrix: LabelledResult  # dims (trait, other, layer)


def trait_directions(
    model: ChatModel,
    pr: PersonaRefusal,
    *,
    traits: Sequence[str] = TRAITS,
    position: str = "mean:system",
    n_questions: int = 20,
    seed: int = 0,
    progress: bool = True,
) -> TraitResult:
    """pos - neg trait instructions (as system prompts, over the trait's questions) per layer."""
    sites = list(pr.persona.sites)
    dirs = {}
    for t in tqdm(traits, desc="traits", disable=not progress):
        ts = load_trait(t)
        qs = ts.questions[:n_questions]
        prompts = [ChatPrompt(system=ts.pos[i % len(ts.pos)], user=q, group="pos") for i, q in enumerate(qs)]
        prompts += [ChatPrompt(system=ts.neg[i % len(ts.neg)], user=q, group="neg") for i, q in enumerate(qs)]
        gm = fit_group_means(model, prompts, sites, [position], progress=False, seed=seed)
        dirs[t] = gm.direction(t, "pos", "neg", position)
    layers = tuple(s.layer for s in sites)
    cos = torch.stack([torch.stack([d.cosine(pr.refusal), d.cosine(pr.persona), d.raw_norms]) for d in dirs.values()])
    cosines = LabelledResult(
        kind="trait_cosines",
        dims=("trait", "layer"),
        coords={"trait": tuple(dirs), "layer": layers},
        values={"cos_refusal": cos[:, 0], "cos_persona": cos[:, 1], "raw_norm": cos[:, 2]},
        config={
            "position": position,
            "n_questions": n_questions,
            "refusal_position": pr.refusal.position,
            "persona_position": pr.persona.position,
        },
        provenance=provenance(model, seed=seed),
    )
    vec = torch.stack([d.vectors.double() for d in dirs.values()])  # [trait, layer, d]
    matrix = LabelledResult(
        kind="trait_matrix",
        dims=("trait", "other", "layer"),
        coords={"trait": tuple(dirs), "other": tuple(dirs), "layer": layers},
        values={"cos": torch.einsum("ild,jld->ijl", vec, vec).float()},
        config={"position": position},
        provenance=provenance(model, seed=seed),
    )
    return TraitResult(directions=dirs, cosines=cosines, matrix=matrix)


def select_steering(
    model: ChatModel,
    persona: DirectionSet,
    *,
    layers: Sequence[int] | None = None,
    alphas: Sequence[float] = (1.0, 2.0, 3.0, 4.0),
    kl_max: float = 0.1,
    exclude_last: float = 0.2,
    min_drop: float = 0.25,
    n: int = 32,
    seed: int = 0,
    scorer: RefusalScorer | None = None,
    progress: bool = True,
) -> LabelledResult:
    """The candidates table over (layer, alpha) and the chosen cell (``baselines['chosen']``)."""
    groups, scorer = experiment_setup(model, n, seed, scorer, None)
    layers = experiment_layers(model, layers)
    L = int(model.cfg.n_layers)
    alphas = [float(a) for a in alphas]
    cells: dict[tuple, Scored] = {}
    for request in ("harmful", "harmless"):
        for layer in layers:
            for a in alphas:
                cells[(request, layer, a)] = Scored(f"safe/{request}", (Steer(persona, alpha=a, layers=[layer]),))
    kl_from: dict[int, KLFrom] = {}

    def derive(key: tuple, lp: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        if key[0] == "harmless":
            return {"kl": kl_from.setdefault(id(clean), KLFrom(clean))(lp).mean()}
        lo, rf = scorer.from_logprobs(lp)
        return {"rate": rf.float().mean(), "logodds": lo.mean()}

    prompts = {f"safe/{r}": groups[f"safe/{r}"] for r in ("harmful", "harmless")}
    spec = GridSpec("steering_selection", cells, prompts=prompts, derive=derive, desc="selection")
    got = run_grid(model, spec, progress=progress, **scorer.grid_options())
    rate, logodds = (
        got.tensor("rate", layers, alphas, prefix=("harmful",)),
        got.tensor("logodds", layers, alphas, prefix=("harmful",)),
    )
    kl = got.tensor("kl", layers, alphas, prefix=("harmless",))
    clean_harmful = got.clean["safe/harmful"]
    base_rate = float(scorer.from_logprobs(clean_harmful)[1].float().mean())
    late = torch.tensor([layer >= (1 - exclude_last) * L for layer in layers])[:, None]
    eligible = (kl <= kl_max) & ~late & (rate <= base_rate - min_drop)
    chosen = None
    if eligible.any():
        # lowest refusal, then lowest KL, then smallest alpha
        cands = [(float(rate[i, j]), float(kl[i, j]), alphas[j], layers[i]) for i, j in eligible.nonzero().tolist()]
        r, k, a, layer = min(cands)
        chosen = {"layer": layer, "alpha": float(a), "refusal_rate": round(r, 4), "kl_harmless": round(k, 4)}
    return LabelledResult(
        kind="steering_selection",
        dims=("layer", "alpha"),
        coords={"layer": tuple(layers), "alpha": tuple(float(a) for a in alphas)},
        values={"refusal_rate": rate, "logodds": logodds, "kl_harmless": kl, "eligible": eligible},
        baselines={"unsteered_refusal_rate": round(base_rate, 4), "chosen": chosen},
        metric={"name": "refusal at the first response token; KL of the first token on harmless prompts"},
        config={
            "direction": persona.name,
            "kl_max": kl_max,
            "exclude_last": exclude_last,
            "min_drop": min_drop,
            "n": n,
            "seed": seed,
        },
        provenance=provenance(model, seed=seed),
    )
