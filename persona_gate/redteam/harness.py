"""Persona red-teaming: do persona manipulations bypass refusal where direct phrasings do not?

The same harmful requests are attacked by each template of :mod:`persona_gate.redteam.attacks` (families
``none`` = the plain request, ``direct`` = refusal-bypass phrasings, ``persona`` = role-play and
"you are now an assistant that never refuses" framings). For every attacked prompt we record

* the refusal **score**: first-token refusal log-odds ``log p_refuse - log(1 - p_refuse)``
  (:class:`~persona_gate.experiments.RefusalScorer`; > 0 means refusal is likelier);
* the refusal **label**: the greedy reply (``max_new_tokens``) judged refusal / bypass /
  degenerate (heuristics by default, any judge), or the greedy first token when not generating;
* the **persona projection** ``x . v_l``: the residual stream at layer ``l`` projected on the unit
  persona direction (positive = compliant, negative = safe) and averaged over the tokens the
  attacker wrote (``position="mean:attack"``): the user turn, plus the system prompt when the
  attack supplies one. The persona direction is fitted as a mean over system-prompt tokens, i.e.
  over the text that states a persona; an attack may state it in either turn, so we read the
  same kind of mean over wherever the attack's text is. A base system prompt that the attacker
  does not control is left out: under causal attention its tokens cannot see the attack.

Per family, the refusal rate is ``k / n`` over (attack x request) with a Wilson 95% interval
(prompts share requests, so the interval is optimistic about independence). How well the
projection predicts a bypass is the AUROC of bypass vs not bypass -- the negative class is every
other prompt: refused or, when replies are judged, degenerate -- computed exactly from ranks
(Mann-Whitney, ties count one half):

    AUROC = (sum of midranks of bypass prompts - n_b (n_b + 1) / 2) / (n_b n_o)
          = P(proj(bypass) > proj(not bypass)) + P(tie) / 2

Example::

    pr = fit_persona_and_refusal(model)
    rt = red_team(model, pr.persona, progress=False)
    print(rt.format_table()); rt.table(); rt.save("runs/redteam")
    red_team(model, pr.persona, config=RedTeamConfig(families=("persona",), generate_labels=False))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..core.contrasts import PersonaRefusal
from ..core.directions import DirectionSet
from ..errors import (
    ConfigError,
    DatasetError,
    EmptyGroupError,
    LayerOutOfRangeError,
    NonFiniteError,
    UnknownHookSiteError,
)
from ..models.profile import profile_of
from ..models.protocol import ChatModel
from ..prompts.chat import RenderedPrompt, render_all
from ..prompts.positions import parse_position
from ..prompts.sets import Request
from ..results import LabelledResult
from ..scoring.labels import BYPASS, DEGENERATE, REFUSAL
from ..scoring.stats import auroc
from .attacks import (
    FAMILIES,
    Attack,
    attack_prompts,
    attacks_for,
    check_attacks,
    check_families,
)
from .result import KIND, PROJECTIONS_KIND, RedTeamResult, auroc_or_none, families_of  # noqa: F401

log = logging.getLogger(__name__)

ATTACK_POSITION = "mean:attack"


# ---------------------------------------------------------------------------------------- inputs


def default_requests(model: ChatModel, n: int = 16, seed: int = 0) -> list[Request]:
    """``n`` held-out harmful requests from the model profile's prompt sets (test split)."""
    if n < 1:
        raise ConfigError(f"n must be >= 1 request, got {n}.")
    pool = profile_of(model).prompt_sets.requests("harmful", "test", n, seed)
    return pool if len(pool) <= n else random.Random(seed).sample(pool, n)


def as_requests(requests: Sequence[Request | str]) -> list[Request]:
    """Requests as given; plain strings become ``Request(text, id='request-000', harmful=True)``."""
    if isinstance(requests, str):
        raise DatasetError("requests must be a list of requests, not one string; wrap it: [text].")
    out = [
        r if isinstance(r, Request) else Request(text=r, id=f"request-{i:03d}", harmful=True)
        for i, r in enumerate(requests)
    ]
    if not out:
        raise EmptyGroupError("no requests were given; pass at least one harmful request.")
    empty = [r.id for r in out if not r.text.strip()]
    if empty:
        raise DatasetError(f"requests {empty} are empty; drop them or give them text.")
    ids = [r.id for r in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DatasetError(f"request ids {dup} repeat; give every request its own id.")
    return out


def read_requests(path: str | Path) -> list[Request]:
    """Requests from a file: ``.txt`` one per line (blank lines skipped), or ``.json`` -- a list of
    strings or of objects with ``text`` (and optional ``id``), or ``{"items": [...]}``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist; pass a .txt (one request per line) or .json file.") from None
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(
                f"{path} is not valid JSON ({e}); fix it or pass a .txt file, one request per line."
            ) from None
        items = raw.get("items") if isinstance(raw, dict) else raw
        if not isinstance(items, list):
            raise DatasetError(f"{path} must hold a list of requests (or {{'items': [...]}}).")
        out: list[Request | str] = []
        for i, it in enumerate(items):
            if isinstance(it, str):
                out.append(it)
            elif isinstance(it, dict) and isinstance(it.get("text"), str):
                out.append(
                    Request(text=it["text"], id=str(it.get("id", f"request-{i:03d}")), harmful=True, source=str(path))
                )
            else:
                raise DatasetError(f"{path}: item {i} is neither a string nor an object with 'text'.")
        return as_requests(out)
    return as_requests([line.strip() for line in text.splitlines() if line.strip()])


def load_persona_directions(path: str | Path, model: ChatModel | None = None) -> DirectionSet:
    """The persona directions in ``path``: a saved DirectionSet, or a ``persona-gate directions --out`` folder."""
    path = Path(path)
    if (path / "persona").is_dir():
        path = path / "persona"
    return DirectionSet.load(path, model=model)


# ---------------------------------------------------------------------------------------- harness


def _persona_set(persona: DirectionSet | PersonaRefusal) -> DirectionSet:
    return persona.persona if isinstance(persona, PersonaRefusal) else persona


def _pick_layer(persona: DirectionSet, layer: int | None) -> int:
    layers = persona.layers
    if len(set(layers)) != len(layers):
        raise UnknownHookSiteError(
            f"the persona set {persona.name!r} holds several sites per layer; pass a set of one site kind."
        )
    if layer is None:
        return layers[len(layers) // 2]  # the middle of the fitted layers: no choice made on these data
    if layer not in layers:
        raise LayerOutOfRangeError(
            f"layer {layer} is not in the persona directions (layers {layers}); pass one of those."
        )
    return layer


def _project(
    model: ChatModel,
    persona: DirectionSet,
    rendered: Sequence[RenderedPrompt],
    attacker_system: Sequence[bool],
    position: str,
    batch_size: int,
) -> Float[Tensor, "prompt site"]:
    """``x . v`` at every persona site; ``mean:attack`` = token-weighted mean of the user and attacker-system spans.

    One forward per prompt: prompts whose attack brings a system prompt read ``mean:user`` and
    ``mean:system`` in the same pass.
    """
    from ..core.activations import iter_activations

    out = torch.empty((len(rendered), len(persona.sites)), dtype=torch.float32)
    every = list(range(len(rendered)))
    if position != ATTACK_POSITION:
        groups = [(every, [position])]
    else:
        groups = [
            ([i for i in every if not attacker_system[i]], ["mean:user"]),
            ([i for i in every if attacker_system[i]], ["mean:user", "mean:system"]),
        ]
    for idx, positions in groups:
        if not idx:
            continue
        sub = [rendered[i] for i in idx]
        for b in iter_activations(model, sub, persona.sites, positions, batch_size=batch_size, progress=False):
            acts = b.acts[0]  # (batch, site, d_model)
            if len(positions) == 2:
                # The mean over the union of the two (disjoint) spans is the count-weighted mean of the span means.
                n_user = torch.tensor([float(sub[i].user[1] - sub[i].user[0]) for i in b.indices], dtype=torch.float64)
                n_sys = torch.tensor(
                    [float(sub[i].system[1] - sub[i].system[0]) for i in b.indices], dtype=torch.float64
                )  # type: ignore[index]
                acts = (n_user[:, None, None] * acts.double() + n_sys[:, None, None] * b.acts[1].double()) / (
                    n_user + n_sys
                )[:, None, None]
            out[[idx[i] for i in b.indices]] = persona.project(acts)
    return out


def _labels(
    model: ChatModel, rendered: Sequence[RenderedPrompt], max_new_tokens: int, judge: Any, batch_size: int
) -> tuple[list[str], list[str]]:
    from ..core.generation import generate
    from ..scoring.judges import HeuristicJudge, judge_all

    outs = generate(model, rendered, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    texts = [g.text for g in outs]
    verdicts = judge_all(judge or HeuristicJudge(), [rp.prompt.user for rp in rendered], texts, progress=False)
    return [v.label for v in verdicts], texts


@dataclass(frozen=True)
class RedTeamConfig:
    """How :func:`red_team` attacks, scores and labels (module docstring).

    ``families``: the attack families to run; ``attacks``: the templates (default the built-in
    ones of ``families`` for the model, :func:`attacks_for`); ``system``: the base system prompt
    (default none; attacks that bring their own replace it). ``layer``: where the projection is
    read for the headline AUROC and the scatter (default the middle persona layer; every persona
    layer's AUROC is kept too); ``position``: ``mean:attack`` or any position selector (``last``,
    ``mean:user``, ...). ``n``: held-out harmful requests when none are given; ``scorer``: the
    model's :class:`~persona_gate.experiments.RefusalScorer` (default ``for_model(model)``).
    ``generate_labels=False`` labels by the greedy first token only; otherwise replies of
    ``max_new_tokens`` are judged by ``judge`` (default heuristics). ``seed``: which requests.
    """

    families: Sequence[str] = FAMILIES
    attacks: Sequence[Attack] | None = None
    system: str | None = None
    layer: int | None = None
    position: str = ATTACK_POSITION
    n: int = 16
    scorer: Any = None
    generate_labels: bool = True
    max_new_tokens: int = 24
    judge: Any = None
    batch_size: int = 32
    seed: int = 0


def red_team(
    model: ChatModel,
    persona: DirectionSet | PersonaRefusal,
    requests: Sequence[Request | str] | None = None,
    *,
    config: RedTeamConfig | None = None,
    progress: bool = True,
    **options: Any,
) -> RedTeamResult:
    """Attack the same harmful requests with every template of the families; score, label and project each.

    ``persona``: the persona directions (or a :class:`PersonaRefusal`), positive = compliant.
    ``requests``: default ``n`` held-out harmful requests (:func:`default_requests`). ``config``:
    how to attack (:class:`RedTeamConfig`, default its defaults); any of its fields may be passed
    as a keyword instead (``red_team(model, persona, families=("persona",))``), overriding ``config``'s.
    """
    from ..scoring.refusal import RefusalScorer

    cfg = dataclasses.replace(config if config is not None else RedTeamConfig(), **options)
    pset = _persona_set(persona)
    pset.check_model(model)
    layer = _pick_layer(pset, cfg.layer)
    position = cfg.position if cfg.position == ATTACK_POSITION else str(parse_position(cfg.position))
    generate_labels, max_new_tokens, judge = cfg.generate_labels, cfg.max_new_tokens, cfg.judge
    if max_new_tokens < 1:
        raise ConfigError(
            f"max_new_tokens must be >= 1, got {max_new_tokens}; pass generate_labels=False to skip replies."
        )
    chosen = _choose_attacks(model, cfg.attacks, cfg.families)
    reqs = as_requests(requests) if requests is not None else default_requests(model, cfg.n, cfg.seed)
    scorer = cfg.scorer if cfg.scorer is not None else RefusalScorer.for_model(model)
    m = _measure(
        model,
        pset,
        chosen,
        reqs,
        cfg.system,
        position,
        scorer,
        generate_labels,
        max_new_tokens,
        judge,
        cfg.batch_size,
        progress,
    )
    run = {
        "system": cfg.system,
        "layer": layer,
        "position": position,
        "generate_labels": generate_labels,
        "max_new_tokens": max_new_tokens if generate_labels else None,
        "seed": cfg.seed,
        "judge": getattr(judge, "name", type(judge).__name__)
        if judge is not None
        else ("heuristic" if generate_labels else None),
    }
    return _assemble(model, pset, chosen, reqs, scorer, m, run)


def _choose_attacks(model: ChatModel, attacks: Sequence[Attack] | None, families: Sequence[str]) -> tuple[Attack, ...]:
    """The given attacks of ``families``, or the model profile's own."""
    if attacks is None:
        return attacks_for(model, families)
    wanted = check_families(families)
    chosen = tuple(a for a in check_attacks(attacks) if a.family in wanted)
    if not chosen:
        raise EmptyGroupError(
            f"none of the given attacks belongs to the families {list(wanted)}; pass families= to match."
        )
    return chosen


@dataclass(frozen=True)
class _Measured:
    """Per (attack, request): first-token log-odds and refusal, projections per layer, judged replies."""

    logodds: Tensor
    refused: Tensor
    projection: Tensor
    labels: dict[str, Tensor]
    replies: list[list[str]]


def _measure(
    model: ChatModel,
    pset: DirectionSet,
    chosen: Sequence[Attack],
    reqs: Sequence[Request],
    system: str | None,
    position: str,
    scorer: Any,
    generate_labels: bool,
    max_new_tokens: int,
    judge: Any,
    batch_size: int,
    progress: bool,
) -> _Measured:
    """Score, project and (optionally) generate every attacked prompt, one family at a time."""
    from ..scoring.metrics import first_token_logprobs

    A, R, S = len(chosen), len(reqs), len(pset.sites)
    logodds, refused = torch.empty(A, R), torch.empty(A, R, dtype=torch.bool)
    proj = torch.empty(A, R, S)
    gen = {k: torch.zeros(A, R, dtype=torch.bool) for k in (REFUSAL, BYPASS, DEGENERATE)}
    replies: list[list[str]] = [[] for _ in chosen]
    fams = list(dict.fromkeys(a.family for a in chosen))
    bar = tqdm(fams, desc="red team", unit="family", disable=not progress)
    for fam in bar:
        rows = [i for i, a in enumerate(chosen) if a.family == fam]
        bar.set_postfix_str(f"{fam}: {len(rows)} attacks x {R} requests")
        prompts = attack_prompts([chosen[i] for i in rows], reqs, system)
        rendered = render_all(model.tokenizer, prompts)
        # Rendered once, for scoring, projection and generation: the scorer's own forward
        # (scorer.score(prompts)) would render again; this is that forward on the rendered prompts.
        lo, rf = scorer.from_logprobs(first_token_logprobs(scorer.model, rendered, batch_size=scorer.batch_size))
        logodds[rows], refused[rows] = lo.reshape(len(rows), R), rf.reshape(len(rows), R)
        own_system = [chosen[i].system is not None for i in rows for _ in reqs]
        proj[rows] = _project(model, pset, rendered, own_system, position, batch_size).reshape(len(rows), R, S)
        if generate_labels:
            labels, texts = _labels(model, rendered, max_new_tokens, judge, batch_size)
            for k, t in gen.items():
                t[rows] = torch.tensor([x == k for x in labels]).reshape(len(rows), R)
            for j, i in enumerate(rows):
                replies[i] = texts[j * R : (j + 1) * R]
    bar.close()
    if not torch.isfinite(logodds).all() or not torch.isfinite(proj).all():
        raise NonFiniteError("non-finite refusal scores or projections; load the model in float32 (dtype='float32').")
    return _Measured(logodds, refused, proj, gen, replies)


def _assemble(
    model: ChatModel,
    pset: DirectionSet,
    chosen: Sequence[Attack],
    reqs: Sequence[Request],
    scorer: Any,
    m: _Measured,
    run: dict[str, Any],
) -> RedTeamResult:
    """The typed result: scores and AUROCs per layer, projections, replies, config and provenance."""
    from ..models.loading import provenance

    generate_labels, layer, position = run["generate_labels"], run["layer"], run["position"]
    bypass = m.labels[BYPASS] if generate_labels else ~m.refused
    flat = bypass.reshape(-1)
    by_layer = {str(k): auroc_or_none(m.projection[..., s].reshape(-1), flat) for s, k in enumerate(pset.layers)}
    si = pset.layers.index(layer)
    if by_layer[str(layer)] is None:
        log.warning(
            "every prompt had the same outcome (%d of %d bypassed); the AUROC is undefined",
            int(flat.sum()),
            flat.numel(),
        )
    values: dict[str, Tensor] = {"logodds": m.logodds, "refused": m.refused}
    if generate_labels:
        values |= {"gen_refusal": m.labels[REFUSAL], "gen_degenerate": m.labels[DEGENERATE]}
    values |= {"bypass": bypass, "projection": m.projection[..., si].clone()}
    config = {
        "attacks": [a.to_dict() for a in chosen],
        "requests": [{"id": r.id, "text": r.text} for r in reqs],
        "system": run["system"],
        "layer": layer,
        "position": position,
        "persona": {"name": pset.name, "positive": pset.positive, "negative": pset.negative, "position": pset.position},
        "generate_labels": generate_labels,
        "max_new_tokens": run["max_new_tokens"],
        "judge": run["judge"],
        "refusal_token_ids": list(scorer.token_ids),
        "seed": run["seed"],
    }
    coords = {"attack": tuple(a.id for a in chosen), "request": tuple(r.id for r in reqs)}
    prov = provenance(model, seed=run["seed"])
    metric, projection_metric = _metric(pset, layer, position, generate_labels)
    scores = LabelledResult(
        kind=KIND,
        dims=("attack", "request"),
        coords=coords,
        values=values,
        baselines={
            "auroc": by_layer[str(layer)],
            "auroc_by_layer": by_layer,
            "n_bypass": int(flat.sum()),
            "n_prompts": flat.numel(),
        },
        metric=metric,
        config=config,
        provenance=prov,
    )
    projections = LabelledResult(
        kind=PROJECTIONS_KIND,
        dims=("attack", "request", "layer"),
        coords={**coords, "layer": tuple(pset.layers)},
        values={"projection": m.projection},
        metric=projection_metric,
        config={k: config[k] for k in ("position", "persona", "layer")},
        provenance=prov,
    )
    return RedTeamResult(scores, projections, tuple(tuple(r) for r in m.replies) if generate_labels else None)


def _metric(pset: DirectionSet, layer: int, position: str, generate_labels: bool) -> tuple[dict, dict]:
    """What the scores' values mean (the per-value form of ``LabelledResult.metric``), and the projections'."""

    def projection_prose(where: str) -> str:  # the scores' one layer, or the projections' every layer
        return f"x . v_persona {where}, {position}; > 0: toward {pset.positive}"

    metric = {
        "name": "refusal under attack",
        "logodds": "first-token refusal log-odds; > 0: refusal likelier",
        "refusal": "gen_refusal (judged reply)" if generate_labels else "refused (greedy first token)",
        "bypass": "judged reply is a bypass" if generate_labels else "greedy first token is not a refusal",
        "projection": projection_prose(f"at layer {layer}"),
        "auroc": (
            "P(projection of a bypass > projection of a non-bypass (refusal or degenerate reply)) + ties / 2"
            if generate_labels
            else "P(projection of a bypass > projection of a first-token refusal) + ties / 2"
        ),
    }
    return metric, {"projection": projection_prose("per layer")}


__all__ = [
    "ATTACK_POSITION",
    "RedTeamConfig",
    "RedTeamResult",
    "as_requests",
    "auroc",
    "default_requests",
    "families_of",
    "load_persona_directions",
    "read_requests",
    "red_team",
]
