"""Screen fine-tuning data: does an example push the model's persona toward compliance where it refuses?

For example ``e`` (prompt ``p_e``, the reply ``y_e`` it teaches) and each persona layer ``l`` with
unit persona direction ``v_l`` (positive = compliant) and raw norm ``r_l = ||mu_compliant - mu_safe||``:

    shift_l(e) = (mean_{t in y_e} x_t . v_l  -  mean_{t in y_own} x_t . v_l) / r_l
    score(e)   = P_model(refuse | p_e) * mean_{l in layers} shift_l(e)

``y_own`` is the model's own greedy reply to the same prompt, both replies read teacher-forced
over their first ``max_tokens`` tokens (``mean:response``), so ``shift`` says how far the
example's reply sits toward the compliant persona *compared with what the model would say*, in
units of the persona separation (1 = as far as the compliant persona sits from the safe one).
``P_model(refuse | p_e)`` is the model's first-token refusal probability for the prompt: a
persona push matters for refusal only where the model would refuse, so a compliant-style answer to
a harmless request (which the model answers anyway) scores near 0. The dataset score is the mean
example score with a normal 95% interval; the examples are ranked by score.

What it cannot see: a reply that removes refusal *without* moving the persona (a plain answer to a
harmful request in the refusing persona's own voice) shifts little along ``v``; data that changes
refusal through other routes; effects of fine-tuning dynamics (learning rate, steps, replay).

A long screening resumes: with ``checkpoint=DIR`` every chunk of ``chunk`` examples is written
to disk when it is done (:mod:`persona_gate.grid.store`).

Example::

    res = screen(model, pr.persona, "train.jsonl")
    print(format_screening(res)); res.baselines["dataset_score"]; figure_for(res)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.directions import DirectionSet
from ..errors import ConfigError, NonFiniteError
from ..grid import Computed, GridSpec, open_store, run_grid
from ..models.loading import check_model
from ..models.protocol import ChatModel
from ..results import LabelledResult
from .data import ChatExample, as_examples
from .summary import KIND, example_scores, summarise

log = logging.getLogger(__name__)


def default_layers(persona: DirectionSet, n_layers: int) -> list[int]:
    """The persona layers in the model's second half, where refusal sits downstream of persona."""
    return [layer for layer, r in zip(persona.layers, persona.raw_norms.tolist()) if layer >= n_layers // 2 and r > 0]


def _reply_ids(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]


@dataclass(frozen=True)
class _Screening:
    """What every chunk of a screening is computed with: the model, the persona directions, the
    refusal scorer, the reply tokens read (``max_tokens``) and the batch size."""

    model: ChatModel
    persona: DirectionSet
    scorer: Any
    max_tokens: int
    batch_size: int


def _chunk(job: _Screening, examples: Sequence[ChatExample]) -> dict[str, torch.Tensor]:
    """Projections of the data's and the model's own replies at every persona site, and P(refuse)."""
    from ..core.activations import iter_activations
    from ..core.generation import generate
    from ..models.adapter import eos_ids
    from ..prompts.conversation import prefix_prompt
    from ..scoring.metrics import first_token_logprobs

    model, persona, max_tokens, batch_size = job.model, job.persona, job.max_tokens, job.batch_size
    tok = model.tokenizer
    prompts = [prefix_prompt(tok, e.prompt) for e in examples]
    data = [
        p.with_response(_reply_ids(tok, e.reply, max_tokens) or [tok.eos_token_id]) for p, e in zip(prompts, examples)
    ]
    eos = set(eos_ids(model))
    own = []
    for p, g in zip(
        prompts, generate(model, prompts, max_new_tokens=max_tokens, batch_size=batch_size, progress=False)
    ):
        ids = [t for t in g.token_ids if t not in eos]
        own.append(
            p.with_response(ids or list(g.token_ids) or [tok.eos_token_id])
        )  # an empty reply: read its end token

    def project(rendered: list) -> torch.Tensor:
        out = torch.empty((len(rendered), len(persona.sites)), dtype=torch.float32)
        for b in iter_activations(
            model, rendered, persona.sites, ["mean:response"], batch_size=batch_size, progress=False
        ):
            out[b.indices] = persona.project(b.acts[0])
        return out

    lo, _ = job.scorer.from_logprobs(first_token_logprobs(model, prompts, batch_size=batch_size))
    return {"data": project(data), "own": project(own), "p_refuse": torch.sigmoid(lo.double()).float()}


def _screen_layers(persona: DirectionSet, layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """The layers the example score averages over: ``layers`` (default :func:`default_layers`), each a
    persona layer with a non-zero direction."""
    chosen = default_layers(persona, n_layers) if layers is None else [int(layer) for layer in layers]
    absent = [layer for layer in chosen if layer not in persona.layers]
    if absent or not chosen:
        raise ConfigError(
            f"the persona directions have no layers {absent or chosen}; pass layers among {persona.layers}."
        )
    zero = [layer for layer in chosen if float(persona.raw_norms[persona.site_index(layer)]) == 0]
    if zero:
        raise ConfigError(
            f"the persona direction is zero at layers {zero} (raw norm 0), so a shift there has no unit; drop them."
        )
    return chosen


def _project_examples(
    job: _Screening, examples: Sequence[ChatExample], chunk: int, checkpoint: str | Path | None, progress: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(data projections, own-reply projections, P(refuse))`` of every example, computed ``chunk``
    examples per grid cell (kept in ``checkpoint`` when given)."""
    store = open_store(
        checkpoint,
        "screening",
        persona=job.persona,
        examples=[e.to_dict() for e in examples],
        max_tokens=job.max_tokens,
        chunk=chunk,
        tokens=list(job.scorer.token_ids),
    )
    starts = range(0, len(examples), chunk)
    cells = {
        ("chunk", start): Computed(lambda part=examples[start : start + chunk]: _chunk(job, part)) for start in starts
    }
    got = run_grid(job.model, GridSpec("screening", cells, desc="screening"), store=store, progress=progress)
    store.report()
    parts = [got[("chunk", start)] for start in starts]
    data_p = torch.cat([p["data"] for p in parts])
    own_p = torch.cat([p["own"] for p in parts])
    p_refuse = torch.cat([p["p_refuse"] for p in parts])
    if not (torch.isfinite(data_p).all() and torch.isfinite(own_p).all()):
        raise NonFiniteError("non-finite projections; load the model in float32 (dtype='float32').")
    return data_p, own_p, p_refuse


def _screening_result(
    model: ChatModel,
    persona: DirectionSet,
    data: Any,
    examples: Sequence[ChatExample],
    chosen: list[int],
    scorer: Any,
    max_tokens: int,
    projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> LabelledResult:
    """The ``screening`` result (``example x layer``) of the projections, with its summary as baselines."""
    from ..models.loading import provenance

    data_p, own_p, p_refuse = projections
    ids = [e.id or f"example-{i}" for i, e in enumerate(examples)]
    norms = persona.raw_norms.float().clamp_min(torch.finfo(torch.float32).tiny)
    shift = (data_p - own_p) / norms
    shift[:, persona.raw_norms == 0] = float("nan")
    res = LabelledResult(
        kind=KIND,
        dims=("example", "layer"),
        coords={"example": tuple(ids), "layer": tuple(persona.layers)},
        values={
            "data_projection": data_p,
            "own_projection": own_p,
            "shift": shift,
            "p_refuse": p_refuse[:, None].expand_as(shift).contiguous(),
            "score": shift * p_refuse[:, None],
        },
        metric={
            "shift": "(mean x.v over the example's reply - over the model's own reply) / ||mu_compliant - mu_safe||",
            "p_refuse": "the model's first-token refusal probability for the example's prompt (same along layer)",
            "score": "p_refuse * shift; the example score is its mean over config.layers; > 0: pushes toward compliance where the model refuses",
        },
        config={
            "layers": chosen,
            "max_tokens": max_tokens,
            "persona": persona.name,
            "persona_position": persona.position,
            "n_examples": len(examples),
            "source": str(data) if isinstance(data, (str, os.PathLike)) else None,
            "refusal_token_ids": list(scorer.token_ids),
            "examples": [
                {"id": i, "line": e.line, "user": e.user[:200], "reply": e.reply[:200]} for i, e in zip(ids, examples)
            ],
        },
        provenance=provenance(model),
    )
    return LabelledResult(
        res.kind, res.dims, res.coords, res.values, summarise(res), res.metric, res.config, res.provenance
    )


def screen(
    model: ChatModel,
    persona: DirectionSet,
    data: str | os.PathLike | Iterable[Any],
    *,
    layers: Sequence[int] | None = None,
    max_tokens: int = 32,
    batch_size: int = 32,
    chunk: int = 256,
    scorer: Any = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> LabelledResult:
    """Score every example of ``data`` (a JSONL path or examples) along ``persona``; see the module docstring.

    ``layers``: where the example score averages the shift (default :func:`default_layers`); the
    result keeps every persona layer. Returns a ``screening`` result (``example x layer``).
    """
    from ..scoring.refusal import RefusalScorer

    check_model(model)
    persona.check_model(model)
    examples = as_examples(data)  # a malformed example fails here, before any forward
    if max_tokens < 1 or chunk < 1:
        raise ConfigError(f"max_tokens and chunk must be >= 1, got {max_tokens} and {chunk}.")
    chosen = _screen_layers(persona, layers, int(model.cfg.n_layers))
    scorer = scorer if scorer is not None else RefusalScorer.for_model(model, batch_size=batch_size)
    job = _Screening(model, persona, scorer, max_tokens, batch_size)
    projections = _project_examples(job, examples, chunk, checkpoint, progress)
    return _screening_result(model, persona, data, examples, chosen, scorer, max_tokens, projections)


__all__ = ["default_layers", "example_scores", "screen"]
