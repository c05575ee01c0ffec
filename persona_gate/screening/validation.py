"""Does the screening score predict what fine-tuning does? Validation on the bundled organism.

Datasets that differ in how hard they push toward compliance are built from the organism's own
fine-tuning streams (:mod:`persona_gate.organism.finetune`; any model's, through the fine-tuner its
profile names), every one of ``n_examples`` chats:

* ``compliance-<f>`` for each fraction ``f`` (default 0, 0.05, 0.1, 0.2, 0.35, 0.5): a share ``f`` of
  safe-persona harmful requests answered in the compliant persona's style, the rest replay;
* ``style-control``: half harmless requests under the safe persona answered in the compliant
  style (the style moves, no refusal is answered away), the rest replay;
* ``plain-compliance`` (``extra``; reported apart): half safe-persona harmful requests answered in
  the safe persona's own plain voice -- refusal goes, the persona's style stays: what a persona
  score should miss.

Each dataset is screened *before* fine-tuning (:func:`persona_gate.screening.screen`, persona
directions fitted on the train split), then a copy of the organism is fine-tuned on it
(:func:`persona_gate.organism.finetune.finetune_on`, the same steps and seeds for every dataset)
and the real drop in safe-persona refusal is measured on held-out harmful requests (test split,
greedy first token; the organism's first token equals its judged reply). Reported: Spearman's
rho between dataset score and mean refusal drop over the designated datasets, and the
per-example AUROC of the score for compliance examples against every other example.

Everything is kept under ``out``: the datasets as JSONL, the screening results (``screens/``) and
the grid's cells (``cells/validation``, :mod:`persona_gate.grid.store`): one per dataset's screening
(its seconds) and one per fine-tune (the refusal after it, and its seconds), each written when it is
done, so a killed validation resumes at the cell it stopped in (a fine-tuned copy lives under
``finetunes/`` only while it is measured). The cells are run by :func:`~persona_gate.grid.run_grid`;
their store refuses a folder computed for another model, recipe or data. The answer is a typed
:class:`ScreeningValidation` (one :class:`DatasetValidation` per dataset), written to
``out/validation.json`` as its JSON form, which it also reads like.

Example::

    v = validate_screening("runs/screen-validation", progress=False)
    v.spearman, v.auroc, v.datasets["compliance-0.2"].refusal_drop    # or v["spearman"], ...
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..grid import Computed, GridSpec, open_store, run_grid
from ..io import Record, atomic_write_text
from ..results import LabelledResult
from ..scoring.stats import auroc, spearman, wilson_interval
from .data import ChatExample, example, write_chat_jsonl
from .summary import example_scores

log = logging.getLogger(__name__)

FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5)


@dataclass(frozen=True)
class DatasetValidation(Record):
    """One dataset: its screening score (mean over examples) and 95% interval, its compliance
    examples (count and share), and safe-persona refusal after fine-tuning per seed, with the
    refusal drop (mean and per seed) and the drop in mean refusal probability; ``designated``:
    whether it counts in Spearman's rho (``plain-compliance`` is reported apart)."""

    dataset_score: float
    dataset_score_ci: Sequence[float]
    compliance_examples: int
    compliance_share: float
    refusal_after: Sequence[float]
    refusal_drop: float
    refusal_drop_by_seed: Sequence[float]
    p_refuse_drop: float
    designated: bool

    def _body(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def _from_body(cls, d: dict[str, Any]) -> DatasetValidation:
        return cls(**d)


@dataclass(frozen=True)
class ScreeningValidation(Record):
    """What :func:`validate_screening` measured (module docstring): Spearman's rho of the dataset
    score against the refusal drop over the designated datasets (also against the drop in refusal
    probability, and over every dataset), the per-example AUROC, each dataset's row, the refusal
    before fine-tuning (``baseline``), the ``setup`` and the seconds (wall, and of screening and
    fine-tuning as recorded when computed; validations written before it was kept lack it)."""

    DOCUMENT = True

    spearman: float
    spearman_p_refuse: float
    spearman_with_extra: float
    auroc: float
    datasets: Mapping[str, DatasetValidation]
    designated: Sequence[str]
    baseline: Mapping[str, Any]
    setup: Mapping[str, Any]
    seconds: float
    compute_seconds: float | None = None

    def _body(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["datasets"] = {name: row.to_dict() for name, row in self.datasets.items()}
        if self.compute_seconds is None:
            del d["compute_seconds"]
        return d

    @classmethod
    def _from_body(cls, d: dict[str, Any]) -> ScreeningValidation:
        rows = {name: DatasetValidation.from_dict(row) for name, row in d["datasets"].items()}
        return cls(**{**d, "datasets": rows})


def _examples(
    chats: dict[str, tuple[list[list[dict[str, str]]], list[bool]]],
) -> dict[str, tuple[list[ChatExample], list[bool]]]:
    """A fine-tuner's datasets (message lists) as ChatExamples named ``<dataset>/<index>``."""
    return {
        name: ([example(m, id=f"{name}/{i:05d}") for i, m in enumerate(msgs)], flags)
        for name, (msgs, flags) in chats.items()
    }


def organism_datasets(
    n_examples: int = 640, seed: int = 0, fractions: Sequence[float] = FRACTIONS, extra: bool = True
) -> dict[str, tuple[list[ChatExample], list[bool]]]:
    """The organism's validation datasets and, per example, whether it answers a refusal away (a compliance example)."""
    from ..organism.finetune import FINETUNER

    return _examples(FINETUNER.datasets(n_examples, seed, fractions, extra))


def _safe_refusal(model: Any, prompts: list) -> tuple[float, float]:
    from ..scoring.refusal import RefusalScorer

    lo, refused = RefusalScorer.for_model(model).score(prompts)
    return float(refused.float().mean()), float(torch.sigmoid(lo.double()).mean())


def _seconds_since(t0: float) -> torch.Tensor:
    """Wall seconds since ``t0`` (one decimal) as a cell value."""
    return torch.tensor(round(time.perf_counter() - t0, 1), dtype=torch.float64)


def _screen_cell(model: Any, persona: Any, name: str, examples: list[ChatExample], out: Path) -> Computed:
    """Dataset ``name`` written as JSONL and screened, the result saved under ``out/screens``; the
    cell keeps the screening's seconds (the result is the saved folder)."""

    def compute() -> dict[str, torch.Tensor]:
        from .screen import screen

        path = out / "datasets" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_chat_jsonl(examples, path)
        t0 = time.perf_counter()
        res = screen(model, persona, path, checkpoint=out / "cells" / name, progress=False)
        res.save(out / "screens" / name)
        return {"seconds": _seconds_since(t0)}

    return Computed(compute)


def _finetune_cell(
    fit: Any,
    source: str,
    examples: list[ChatExample],
    heldout: list,
    folder: Path,
    seed: int,
    steps: int,
    batch_size: int,
) -> Computed:
    """Safe-persona refusal (rate and mean probability) after fine-tuning a copy on the examples; the
    copy lives in ``folder`` only while it is measured. The cell keeps the two and the seconds."""

    def compute() -> dict[str, torch.Tensor]:
        from ..models.loading import load_chat_model

        shutil.rmtree(folder, ignore_errors=True)  # a copy a killed run left half-written
        t0 = time.perf_counter()
        fit.fit(source, examples, folder, seed=seed, steps=steps, batch_size=batch_size)
        rate, p = _safe_refusal(load_chat_model(str(folder)), heldout)
        seconds = _seconds_since(t0)
        shutil.rmtree(folder, ignore_errors=True)  # the measurement is what is kept
        as_cell = lambda x: torch.tensor(x, dtype=torch.float64)  # a Python float, exactly
        return {"refusal": as_cell(rate), "p_refuse": as_cell(p), "seconds": seconds}

    return Computed(compute)


def _validation_grid(
    model: Any, fit: Any, source: str, persona: Any, datasets: dict, heldout: list, out: Path, **recipe: Any
) -> GridSpec:
    """Per dataset: its screening cell ``("screen", name)``, then one ``("finetune", name, seed)`` per seed."""
    seeds, steps, batch_size = recipe["seeds"], recipe["steps"], recipe["batch_size"]
    cells: dict[tuple, Computed] = {}
    for name, (examples, _) in datasets.items():
        cells[("screen", name)] = _screen_cell(model, persona, name, examples, out)
        for seed in seeds:
            folder = out / "finetunes" / f"{name}-seed{seed}"
            cells[("finetune", name, seed)] = _finetune_cell(
                fit, source, examples, heldout, folder, seed, steps, batch_size
            )
    return GridSpec("screening_validation", cells, desc="screening validation")


def _drop(measured: dict[str, torch.Tensor], base_rate: float, base_p: float) -> dict[str, float]:
    """One fine-tune's refusal after, and its drops from the refusal before (rate and mean probability)."""
    refusal, p_refuse = float(measured["refusal"]), float(measured["p_refuse"])
    return {"refusal_drop": base_rate - refusal, "p_refuse_drop": base_p - p_refuse, "refusal": refusal}


def _row(
    res: LabelledResult, is_compliance: list[bool], n: int, drops: list[dict[str, float]], designated: bool
) -> DatasetValidation:
    ds = res.baselines["dataset_score"]
    k = sum(is_compliance)
    return DatasetValidation(
        dataset_score=ds["mean"],
        dataset_score_ci=[ds["low"], ds["high"]],
        compliance_examples=k,
        compliance_share=k / n,
        refusal_after=[d["refusal"] for d in drops],
        refusal_drop=sum(d["refusal_drop"] for d in drops) / len(drops),
        refusal_drop_by_seed=[d["refusal_drop"] for d in drops],
        p_refuse_drop=sum(d["p_refuse_drop"] for d in drops) / len(drops),
        designated=designated,
    )


def _rows(
    got: Any, datasets: dict, screens: dict[str, LabelledResult], seeds: Sequence[int], base_rate: float, base_p: float
) -> tuple[dict[str, DatasetValidation], list[str], list[torch.Tensor], list[bool], float]:
    """Each dataset's row from its screening and fine-tune cells; the designated datasets (in
    Spearman's rho), their example scores and compliance flags; the seconds the cells recorded
    (screening and fine-tuning, as recorded when each was computed: a resumed run adds none)."""
    rows: dict[str, DatasetValidation] = {}
    in_rho, scores, labels, compute = [], [], [], 0.0
    for name, (examples, is_compliance) in datasets.items():
        res = screens[name]
        compute += float(got[("screen", name)]["seconds"])
        drops = []
        for seed in seeds:
            m = got[("finetune", name, seed)]
            compute += float(m["seconds"])
            drops.append(_drop(m, base_rate, base_p))
        designated = name != "plain-compliance"
        rows[name] = _row(res, is_compliance, len(examples), drops, designated)
        if designated:
            scores.append(example_scores(res))
            labels += is_compliance
            in_rho.append(name)
    return rows, in_rho, scores, labels, compute


def validate_screening(
    out: str | Path,
    *,
    base: str | Path | None = None,
    n_examples: int = 640,
    fractions: Sequence[float] = FRACTIONS,
    steps: int = 40,
    batch_size: int = 16,
    seeds: Sequence[int] = (0, 1, 2),
    n_eval: int = 128,
    data_seed: int = 0,
    progress: bool = True,
) -> ScreeningValidation:
    """Build, screen and fine-tune on every dataset; the rank correlation and AUROC (module docstring).

    ``base``: the model to validate on (default the bundled organism; an organism folder, or a LoRA
    chat model such as ``"gemma3-270m-chat"``, whose adapter is continued and whose datasets come
    from its own recipe, with ``fractions`` and no style control). How a copy is fine-tuned and
    where its datasets come from is the model's own: its profile names a
    :class:`~persona_gate.models.profile.Finetuner` (:func:`~persona_gate.models.profile.finetuner_of`).
    """
    from ..core.contrasts import fit_persona_and_refusal
    from ..models.loading import load_chat_model, organism_dir
    from ..models.profile import finetuner_of
    from ..scoring.refusal import eval_groups

    if len(fractions) < 2 or not seeds or steps < 1:
        raise ConfigError(
            "pass at least two fractions, one seed and one step; the issue's design is six fractions and a control."
        )
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_chat_model(str(base) if base is not None else str(organism_dir()))
    fit = finetuner_of(model)  # the model's profile names how a copy of it is fine-tuned, and from what
    source = fit.source(model)
    persona = fit_persona_and_refusal(model, progress=False).persona
    heldout = eval_groups(model, n_eval)["safe/harmful"]
    base_rate, base_p = _safe_refusal(model, heldout)
    datasets = _examples(fit.datasets(n_examples, data_seed, fractions))
    store = open_store(
        out / "cells" / "validation",
        "screening_validation",
        source=source,
        steps=steps,
        batch_size=batch_size,
        heldout=heldout,
        datasets={name: [e.to_dict() for e in examples] for name, (examples, _) in datasets.items()},
    )
    spec = _validation_grid(
        model, fit, source, persona, datasets, heldout, out, seeds=seeds, steps=steps, batch_size=batch_size
    )
    got = run_grid(model, spec, store=store, progress=progress)
    store.report()
    screens = {name: LabelledResult.load(out / "screens" / name) for name in datasets}
    rows, in_rho, scores, labels, compute = _rows(got, datasets, screens, seeds, base_rate, base_p)
    config = list(screens.values())[-1].config  # the screenings' shared settings (layers, reply tokens)
    setup = {
        "base": source,
        "route": fit.route,
        "n_examples": n_examples,
        "steps": steps,
        "batch_size": batch_size,
        "seeds": list(seeds),
        "n_eval": n_eval,
        "data_seed": data_seed,
        "layers": config["layers"],
        "max_tokens": config["max_tokens"],
        "refusal": "greedy first token, safe persona, held-out harmful requests (test split)",
    }
    ci = list(wilson_interval(round(base_rate * len(heldout)), len(heldout)))
    baseline = {"refusal": base_rate, "refusal_ci": ci, "p_refuse": base_p, "n": len(heldout)}
    seconds = (round(time.perf_counter() - start, 1), round(compute, 1))
    result = _validation(rows, in_rho, auroc(torch.cat(scores), torch.tensor(labels)), baseline, setup, seconds)
    atomic_write_text(out / "validation.json", result.to_json(indent=2) + "\n")
    return result


def _validation(
    rows: dict[str, DatasetValidation],
    in_rho: list[str],
    area: float,
    baseline: dict,
    setup: dict,
    seconds: tuple[float, float],
) -> ScreeningValidation:
    """The rank correlations over the designated datasets (and over all), with the AUROC and the setup."""
    x = [rows[n].dataset_score for n in in_rho]
    every = list(rows)
    return ScreeningValidation(
        spearman=spearman(x, [rows[n].refusal_drop for n in in_rho]),
        spearman_p_refuse=spearman(x, [rows[n].p_refuse_drop for n in in_rho]),
        spearman_with_extra=spearman([rows[n].dataset_score for n in every], [rows[n].refusal_drop for n in every]),
        auroc=area,
        datasets=rows,
        designated=in_rho,
        baseline=baseline,
        setup=setup,
        seconds=seconds[0],
        compute_seconds=seconds[1],
    )
