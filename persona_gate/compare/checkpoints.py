"""Checkpoint comparison: how far did fine-tuning move the persona, the refusal direction and refusal?

Two checkpoints A (reference, e.g. before fine-tuning) and B (e.g. after) of one architecture are
measured on the same prompts. Per layer:

* ``cos_persona``, ``cos_persona_last``, ``cos_refusal``: cosine of X's direction with A's (the
  standard contrasts of :func:`~persona_gate.core.contrasts.fit_persona_and_refusal`, fitted on the
  same training prompts for both); ``*_norm``: each checkpoint's raw norm ``||mu_pos - mu_neg||``.
  NaN where a checkpoint has no direction (raw norm 0, e.g. refusal at ``resid_pre.0``, where every
  prompt ends in the same template token).
* ``shift``: where X puts held-out *safe-persona harmful requests* along A's persona direction
  ``v``, in units of A's own persona separation on the same prompts::

      shift_X = (mean_X(x . v | safe/harmful) - mean_A(x . v | safe/harmful))
                / (mean_A(x . v | compliant/harmful) - mean_A(x . v | safe/harmful))

  0 = where A puts the safe persona, 1 = where A puts the compliant persona, so A's row is 0 by
  construction and B's says how far its safe persona drifted toward compliance.
  ``compliant_shift`` is the same for compliant-persona harmful requests (A's row is 1): if it
  moves as much as ``shift``, the whole representation moved, not the persona; ``separation`` =
  ``compliant_shift - shift`` is X's gap between the personas in A's units (A's row is 1; 0 =
  the two personas merged). These are read at the persona direction's position (mean over the
  system prompt); the ``*_last`` values at the last prompt token (where the reply is decided)
  with A's persona direction read there. ``projection_*`` hold the raw mean projections. NaN
  where A's separation is 0.

Refusal (greedy first response token, A's refusal tokens for both, on the same held-out prompts
of the four persona x request groups) goes to ``baselines["refusal"][checkpoint][group]`` as
``k``/``n`` with Wilson 95% intervals and the mean log-odds, and ``baselines["flips"][group]``
counts the prompts that only A (``refused_a_only``) or only B refuses: paired, same prompts.

Example::

    r = compare_checkpoints("organism", "runs/compliant")
    print(format_comparison(r))                       # per-layer table and refusal-rate change
    r.sel(checkpoint="b")["shift"]; r.save("runs/compare"); LabelledResult.load("runs/compare")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..core.contrasts import GROUPS, PersonaRefusal, fit_persona_and_refusal, standard_prompts
from ..core.directions import DirectionSet, GroupMeans, fit_group_means
from ..errors import CheckpointMismatchError, ConfigError, DModelMismatchError
from ..models.adapter import architecture
from ..models.loading import check_model, load_chat_model, model_info, provenance
from ..models.protocol import ChatModel
from ..prompts.positions import LAST
from ..results import LabelledResult
from ..scoring.stats import RateSummary
from ..sites import sites_for
from .summary import KIND

log = logging.getLogger(__name__)

CHECKPOINTS = ("a", "b")
SHIFT_GROUPS = ("safe/harmful", "compliant/harmful")
DIRECTION_VALUES = (
    "cos_persona",
    "cos_persona_last",
    "cos_refusal",
    "persona_norm",
    "persona_last_norm",
    "refusal_norm",
)
SHIFT_VALUES = ("shift", "compliant_shift", "separation", "projection_safe", "projection_compliant")
SHIFT_LAST_VALUES = tuple(f"{v}_last" for v in SHIFT_VALUES)
SHIFT_FORMULA = (
    "(mean_X(x.v | safe/harmful) - mean_A(x.v | safe/harmful)) / "
    "(mean_A(x.v | compliant/harmful) - mean_A(x.v | safe/harmful)), v = A's unit persona direction"
)


def check_comparable(model_a: Any, model_b: Any) -> None:
    """Raise unless the two checkpoints share width, depth, architecture and vocabulary."""
    da, db = int(model_a.cfg.d_model), int(model_b.cfg.d_model)
    if da != db:
        raise DModelMismatchError(
            f"checkpoint A has d_model {da} but B has {db}; compare two checkpoints of the same model "
            "(e.g. before and after fine-tuning), not two different models."
        )
    la, lb = int(model_a.cfg.n_layers), int(model_b.cfg.n_layers)
    if la != lb:
        raise CheckpointMismatchError(
            f"checkpoint A has {la} layers but B has {lb}; per-layer comparison needs the same depth: "
            "pass two checkpoints of one architecture."
        )
    aa, ab = architecture(model_a), architecture(model_b)
    if aa != ab:
        raise CheckpointMismatchError(f"checkpoint A is a {aa} but B a {ab}; compare checkpoints of one architecture.")
    va, vb = model_a.tokenizer.get_vocab(), model_b.tokenizer.get_vocab()
    if va != vb:
        diff = len(set(va.items()) ^ set(vb.items()))
        raise CheckpointMismatchError(
            f"the two checkpoints' tokenizers differ ({len(va)} vs {len(vb)} tokens, {diff} entries differ), so the "
            "same token id would mean different text; compare checkpoints that share a tokenizer."
        )


def _load(model: Any, dtype: str, device: str | None) -> Any:
    if isinstance(model, (str, os.PathLike)):
        return load_chat_model(model, dtype=dtype, device=device)
    return check_model(model)


def _cos(a: DirectionSet, b: DirectionSet) -> torch.Tensor:
    # A zero vector (raw norm 0) is "no direction": its cosine is undefined, not 0 (orthogonal).
    cos = a.cosine(b).double()
    return torch.where((a.raw_norms > 0) & (b.raw_norms > 0), cos, torch.full_like(cos, float("nan")))


def _projections(means: GroupMeans, direction: DirectionSet, position: str) -> dict[str, torch.Tensor]:
    """Mean projection of each shift group onto ``direction`` at every site (float64, [site])."""
    v = direction.vectors.double()
    return {g: (means.mean(g, position)[0].double() * v).sum(-1) for g in SHIFT_GROUPS}


def _shift(proj_a: dict[str, torch.Tensor], proj_x: dict[str, torch.Tensor], group: str) -> torch.Tensor:
    base = proj_a["safe/harmful"]
    sep = proj_a["compliant/harmful"] - base
    # Zero separation (no direction, e.g. the last token's embedding at resid_pre.0) has no unit.
    safe = torch.where(sep != 0, sep, torch.ones_like(sep))
    return torch.where(sep != 0, (proj_x[group] - base) / safe, torch.full_like(sep, float("nan")))


def _rate(refused: torch.Tensor, logodds: torch.Tensor) -> dict[str, float | int]:
    s = RateSummary.of(int(refused.sum()), int(refused.numel()))
    return {"k": s.k, "n": s.n, "rate": s.rate, "low": s.low, "high": s.high, "logodds": float(logodds.double().mean())}


def _measure_checkpoint(
    model: ChatModel,
    name: str,
    fit_prompts: list,
    shift_prompts: list,
    groups: dict,
    sites: list,
    scorer: Any,
    batch_size: int,
    seed: int,
    bar: Any,
) -> tuple[PersonaRefusal, GroupMeans, dict]:
    """One checkpoint on the shared prompts: its directions, the shift groups' means, refusal per group."""
    bar.set_postfix_str(f"{name}: directions", refresh=False)
    fit = fit_persona_and_refusal(
        model, fit_prompts, layers=[s.layer for s in sites], batch_size=batch_size, progress=False, seed=seed
    )
    bar.update()
    bar.set_postfix_str(f"{name}: projections", refresh=False)
    means = fit_group_means(
        model, shift_prompts, sites, [fit.persona.position, LAST], batch_size=batch_size, progress=False
    )
    bar.update()
    bar.set_postfix_str(f"{name}: refusal", refresh=False)
    scores = {g: scorer.score(groups[g]) for g in GROUPS}  # (log-odds, refused) per prompt
    bar.update()
    return fit, means, scores


def _comparison_values(fits: dict[str, PersonaRefusal], means: dict[str, GroupMeans]) -> dict[str, torch.Tensor]:
    """Every per-layer value, ``[checkpoint, layer]``: cosines with A's directions, norms, shifts."""
    fa = fits["a"]
    values: dict[str, list[torch.Tensor]] = {k: [] for k in (*DIRECTION_VALUES, *SHIFT_VALUES, *SHIFT_LAST_VALUES)}
    proj = {
        (name, suffix): _projections(means[name], d, pos)
        for name in CHECKPOINTS
        for suffix, d, pos in (("", fa.persona, fa.persona.position), ("_last", fa.persona_last, str(LAST)))
    }
    for name in CHECKPOINTS:
        fx = fits[name]
        values["cos_persona"].append(_cos(fa.persona, fx.persona))
        values["cos_persona_last"].append(_cos(fa.persona_last, fx.persona_last))
        values["cos_refusal"].append(_cos(fa.refusal, fx.refusal))
        values["persona_norm"].append(fx.persona.raw_norms.double())
        values["persona_last_norm"].append(fx.persona_last.raw_norms.double())
        values["refusal_norm"].append(fx.refusal.raw_norms.double())
        for suffix in ("", "_last"):
            pa, px = proj["a", suffix], proj[name, suffix]
            values[f"shift{suffix}"].append(_shift(pa, px, "safe/harmful"))
            values[f"compliant_shift{suffix}"].append(_shift(pa, px, "compliant/harmful"))
            values[f"separation{suffix}"].append(values[f"compliant_shift{suffix}"][-1] - values[f"shift{suffix}"][-1])
            values[f"projection_safe{suffix}"].append(px["safe/harmful"])
            values[f"projection_compliant{suffix}"].append(px["compliant/harmful"])
    return {k: torch.stack(v).float() for k, v in values.items()}


def _comparison_config(
    a: ChatModel,
    info_a: Any,
    info_b: Any,
    fit_a: PersonaRefusal,
    n_eval: int,
    sites: list,
    scorer_a: Any,
    n_per_group: int,
    seed: int,
) -> dict[str, Any]:
    """What the comparison was run with: both checkpoints, A's positions and refusal tokens, the counts."""
    return {
        "model_a": info_a.name,
        "model_b": info_b.name,
        "persona_position": fit_a.persona.position,
        "refusal_position": fit_a.refusal.position,
        "kind": sites[0].kind,
        "n_per_group": n_per_group,
        "n_eval": n_eval,
        "seed": seed,
        "refusal_tokens": [a.tokenizer.decode([i]) for i in scorer_a.token_ids],
        "chat_template_hash": {"a": info_a.chat_template_hash, "b": info_b.chat_template_hash},
        "shift": SHIFT_FORMULA,
    }


def _refusal_baselines(scores: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, Any]:
    """Each checkpoint's refusal rate per group, and how many prompts only A or only B refused."""
    refusal = {name: {g: _rate(scores[name][g][1], scores[name][g][0]) for g in GROUPS} for name in CHECKPOINTS}
    flips = {
        g: {
            "refused_a_only": int((scores["a"][g][1] & ~scores["b"][g][1]).sum()),
            "refused_b_only": int((scores["b"][g][1] & ~scores["a"][g][1]).sum()),
        }
        for g in GROUPS
    }
    return {"refusal": refusal, "flips": flips}


def compare_checkpoints(
    model_a: Any,
    model_b: Any,
    *,
    layers: Sequence[int] | None = None,
    n_per_group: int = 48,
    n_eval: int = 32,
    seed: int = 0,
    refusal_phrases: Sequence[str] | None = None,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str | None = None,
    progress: bool = True,
) -> LabelledResult:
    """Compare checkpoint B with reference checkpoint A (models, or names/paths to load).

    Directions are fitted on ``n_per_group`` training requests per group; shifts and refusal are
    measured on ``n_eval`` held-out prompts per group. Both checkpoints see exactly the same
    prompts (built from A). ``refusal_phrases``: the phrases whose first tokens count as refusal;
    default: the organism's own, or those A itself opens its refusals with. Returns a
    ``checkpoint_comparison`` result over ``checkpoint`` (``"a"``, ``"b"``) x ``layer``.
    """
    from ..scoring.refusal import RefusalScorer, eval_groups

    if n_per_group < 2 or n_eval < 2:
        raise ConfigError(
            f"n_per_group and n_eval must be >= 2 (a mean difference needs two prompts), got {n_per_group}, {n_eval}."
        )
    bar = tqdm(total=2 + 3 * len(CHECKPOINTS), desc="compare", unit="step", disable=not progress)
    try:
        bar.set_postfix_str("loading", refresh=False)
        a, b = _load(model_a, dtype, device), _load(model_b, dtype, device)
        check_comparable(a, b)
        info_a, info_b = model_info(a), model_info(b)
        if info_a.chat_template_hash != info_b.chat_template_hash:
            log.warning("the checkpoints' chat templates differ; each renders the prompts with its own")
        sites = sites_for(a, layers)
        fit_prompts = standard_prompts(model=a, n_per_group=n_per_group, seed=seed)
        groups = eval_groups(a, n_eval, seed=seed)
        shift_prompts = [p for g in SHIFT_GROUPS for p in groups[g]]
        scorer_a = RefusalScorer.for_model(a, phrases=refusal_phrases, batch_size=batch_size)
        bar.update()

        fits: dict[str, PersonaRefusal] = {}
        means: dict[str, GroupMeans] = {}
        scores: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        for name, model in zip(CHECKPOINTS, (a, b)):
            scorer = scorer_a if model is a else RefusalScorer(model, scorer_a.token_ids, batch_size)
            fits[name], means[name], scores[name] = _measure_checkpoint(
                model, name, fit_prompts, shift_prompts, groups, sites, scorer, batch_size, seed, bar
            )
        values = _comparison_values(fits, means)
        bar.set_postfix_str("done", refresh=False)
        bar.update()
    finally:
        bar.close()

    config = _comparison_config(
        a, info_a, info_b, fits["a"], len(groups["safe/harmful"]), sites, scorer_a, n_per_group, seed
    )
    prov = provenance(a, seed=seed, config=config)
    prov["model_b"] = {**info_b.to_dict(), "n_layers": int(b.cfg.n_layers), "d_model": int(b.cfg.d_model)}
    return LabelledResult(
        kind=KIND,
        dims=("checkpoint", "layer"),
        coords={"checkpoint": CHECKPOINTS, "layer": tuple(s.layer for s in sites)},
        values=values,
        baselines=_refusal_baselines(scores),
        metric={
            "name": "cosine with checkpoint A's direction; shift in units of A's persona separation",
            "higher_means": "cos: more like A's direction; shift: further toward the compliant persona",
        },
        config=config,
        provenance=prov,
    )
