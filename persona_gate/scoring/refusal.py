"""Scoring refusal under interventions: the measurement every experiment repeats.

A :class:`RefusalScorer` fixes the model and its refusal-start tokens once; ``score(prompts,
*specs)`` runs one forward per batch under the given interventions and returns, per prompt, the
refusal log-odds at the first response position and whether the greedy first token starts a
refusal. ``labels(prompts, *specs)`` generates and labels replies (refusal / bypass /
degenerate) when the first token is not enough. ``eval_groups`` builds the held-out groups the
experiments score on: equal counts of safe/compliant persona x harmful/harmless requests.

Example::

    scorer = RefusalScorer.for_model(model)
    logodds, refused = scorer.score(groups["safe/harmful"], Steer(persona, 4.0, layers=[2]))
    refused.float().mean()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..core.contrasts import GROUPS, standard_prompts
from ..core.interventions import apply
from ..errors import EmptyGroupError
from ..models.profile import profile_of
from ..models.protocol import ChatModel
from ..prompts.sets import ChatPrompt
from .metrics import derive_refusal_tokens, first_token_logprobs, refusal_logodds, refusal_token_ids, refused


def eval_groups(
    model: ChatModel, n: int = 32, *, split: str = "test", seed: int = 0, harmful: Sequence[Any] | None = None
) -> dict[str, list[ChatPrompt]]:
    """``n`` held-out prompts for each of the four persona x request groups.

    ``harmful`` replaces the harmful requests (e.g. ``datasets.load_strongreject(path)``).
    """
    grid = standard_prompts(model=model, n_per_group=n, split=split, seed=seed, harmful=harmful)
    groups = {g: [p for p in grid if p.group == g] for g in GROUPS}
    short = {g: len(v) for g, v in groups.items() if len(v) < 2}
    if short:
        raise EmptyGroupError(f"too few held-out prompts in {short}; lower n or add prompts.")
    m = min(len(v) for v in groups.values())
    return {g: v[:m] for g, v in groups.items()}


# Prompts per forward when refusal is scored: the pipeline's scorer, its cost plan and its timing probe.
BATCH_SIZE = 32


@dataclass(frozen=True)
class RefusalScorer:
    """Refusal measured at the first response token, under any interventions."""

    model: ChatModel
    token_ids: tuple[int, ...]
    batch_size: int = BATCH_SIZE
    # Grids of cells (:meth:`grid_options`) re-run only the blocks a cell changes, tiling up to
    # ``max_tokens`` tokens per re-run (None: by device); ``reuse_prefix=False`` runs one full
    # forward per cell.
    reuse_prefix: bool = True
    max_tokens: int | None = None

    @classmethod
    def for_model(
        cls,
        model: ChatModel,
        *,
        phrases: Sequence[str] | None = None,
        harmful: Sequence[ChatPrompt] | None = None,
        batch_size: int = BATCH_SIZE,
        reuse_prefix: bool = True,
        max_tokens: int | None = None,
    ) -> RefusalScorer:
        """Refusal tokens from ``phrases`` if given, else the model profile's phrases, else derived
        from the model's own refusals of harmful training requests."""
        phrases = phrases if phrases is not None else profile_of(model).refusal_phrases
        if phrases is not None:
            ids = refusal_token_ids(model.tokenizer, phrases)
        else:
            harmful = list(harmful) if harmful is not None else eval_groups(model, 16, split="train")["safe/harmful"]
            ids = derive_refusal_tokens(model, harmful)
        return cls(
            model=model, token_ids=tuple(ids), batch_size=batch_size, reuse_prefix=reuse_prefix, max_tokens=max_tokens
        )

    def logprobs(self, prompts: Sequence[ChatPrompt], *specs: Any) -> Tensor:
        with apply(self.model, *specs):
            return first_token_logprobs(self.model, prompts, batch_size=self.batch_size)

    def grid_options(self) -> dict[str, Any]:
        """How grids scored for this scorer run their forwards (:func:`persona_gate.grid.run_grid`'s
        ``batch_size``, ``max_tokens`` and ``reuse``)."""
        return {"batch_size": self.batch_size, "max_tokens": self.max_tokens, "reuse": self.reuse_prefix}

    def from_logprobs(self, lp: Tensor) -> tuple[Tensor, Tensor]:
        """Refusal log-odds (float) and greedy-first-token refusal (bool) from first-token log-probs."""
        return refusal_logodds(lp, self.token_ids), refused(lp, self.token_ids)

    def score(self, prompts: Sequence[ChatPrompt], *specs: Any) -> tuple[Tensor, Tensor]:
        """Per prompt: refusal log-odds (float) and greedy-first-token refusal (bool)."""
        return self.from_logprobs(self.logprobs(prompts, *specs))

    def labels(
        self, prompts: Sequence[ChatPrompt], *specs: Any, max_new_tokens: int = 32, judge: Any = None
    ) -> list[str]:
        """Generated replies labelled refusal / bypass / degenerate (slower than :meth:`score`).

        ``judge``: any ``(prompt, response) -> JudgeVerdict`` callable (see :mod:`persona_gate.scoring.judges`),
        e.g. a :class:`~persona_gate.scoring.judges.ClassifierJudge` running Llama-Guard; default: heuristics.
        """
        from ..core.generation import generate
        from .judges import HeuristicJudge, judge_all

        with apply(self.model, *specs):
            outs = generate(
                self.model, prompts, max_new_tokens=max_new_tokens, batch_size=self.batch_size, progress=False
            )
        verdicts = judge_all(
            judge or HeuristicJudge(), [p.user for p in prompts], [g.text for g in outs], progress=False
        )
        return [v.label for v in verdicts]
