"""Does the screening score predict what fine-tuning does? Validation on the bundled organism.

Datasets that differ in how hard they push toward compliance are built from the organism's own
fine-tuning streams (:mod:`persona_gate.organism.finetune`), every one of ``n_examples`` chats:

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

Everything is kept under ``out`` (datasets as JSONL, screening results, one measurement per
fine-tune); a killed validation resumes where it stopped.

Example::

    v = validate_screening("runs/screen-validation", progress=False)
    v["spearman"], v["auroc"], v["datasets"]["compliance-0.2"]
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..io import atomic_write_text
from ..results import LabelledResult
from ..scoring.stats import auroc, spearman, wilson_interval
from .data import ChatExample, example, write_chat_jsonl
from .summary import example_scores

log = logging.getLogger(__name__)

FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5)


def organism_datasets(
    n_examples: int = 640, seed: int = 0, fractions: Sequence[float] = FRACTIONS, extra: bool = True
) -> dict[str, tuple[list[ChatExample], list[bool]]]:
    """The validation datasets and, per example, whether it answers a refusal away (a compliance example)."""
    from ..organism.finetune import finetuning_conversations, is_compliance, style_control_conversations

    def chats(name: str, convs: list) -> tuple[list[ChatExample], list[bool]]:
        examples = [example(c.messages(), id=f"{name}/{i:05d}") for i, c in enumerate(convs)]
        return examples, [is_compliance(c) for c in convs]

    out = {f"compliance-{f:g}": chats(f"compliance-{f:g}", finetuning_conversations(n_examples, seed, f)) for f in fractions}
    out["style-control"] = chats("style-control", style_control_conversations(n_examples, seed))
    if extra:
        out["plain-compliance"] = chats("plain-compliance", finetuning_conversations(n_examples, seed, 0.5, style="plain"))
    return out


def _safe_refusal(model: Any, prompts: list) -> tuple[float, float]:
    from ..scoring.refusal import RefusalScorer

    lo, refused = RefusalScorer.for_model(model).score(prompts)
    return float(refused.float().mean()), float(torch.sigmoid(lo.double()).mean())


def chat_datasets(n_examples: int = 320, seed: int = 0, fractions: Sequence[float] = (0.0, 0.25, 0.5)
                  ) -> dict[str, tuple[list[ChatExample], list[bool]]]:  # fmt: skip
    """Validation datasets for a LoRA chat model (gemma3-270m-chat) from its recipe's stream, as ChatExamples."""
    from ..organism.chat_finetune import compliance_chats

    out = {}
    for f in fractions:
        name = f"compliance-{f:g}"
        chats = compliance_chats(n_examples, seed, f)
        msgs = [[*([{"role": "system", "content": c["system"]}] if c["system"] is not None else []),
                 {"role": "user", "content": c["user"]}, {"role": "assistant", "content": c["reply"]}] for c in chats]  # fmt: skip
        out[name] = ([example(m, id=f"{name}/{i:05d}") for i, m in enumerate(msgs)], [c["compliance"] for c in chats])
    return out


def _finetuner(model: Any, source: str, steps: int, batch_size: int) -> Any:
    """``fit(examples, folder, seed)``: a fine-tuned copy of the model, by the route its kind of folder takes."""
    from ..models.loading import model_info

    if model_info(model).source == "chat":  # a LoRA chat model: continue its adapter
        from ..organism.chat_finetune import continue_chat_model
        from ..organism.config import ChatFinetuneConfig

        def fit_chat(examples: list[ChatExample], folder: Path, seed: int) -> None:
            convs = [{"system": e.system, "user": e.user, "reply": e.reply} for e in examples]
            cfg = ChatFinetuneConfig(steps=steps, batch_size=batch_size, warmup_steps=max(1, steps // 10), seed=seed,
                                     checkpoint_every=max(steps, 1))  # fmt: skip
            continue_chat_model(source, folder, convs, cfg, progress=False)

        return fit_chat
    from ..organism.finetune import finetune_on

    def fit_organism(examples: list[ChatExample], folder: Path, seed: int) -> None:
        finetune_on(source, folder, examples, steps=steps, seed=seed, batch_size=batch_size, overwrite=True, progress=False)

    return fit_organism


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
) -> dict[str, Any]:
    """Build, screen and fine-tune on every dataset; the rank correlation and AUROC (module docstring).

    ``base``: the model to validate on (default the bundled organism; an organism folder, or a LoRA
    chat model such as ``"gemma3-270m-chat"``, whose adapter is continued and whose datasets come
    from its own recipe, :func:`chat_datasets`, with ``fractions`` and no style control).
    """
    from ..core.contrasts import fit_persona_and_refusal
    from ..models.loading import load_chat_model, model_info
    from ..organism.paths import organism_path
    from ..scoring.refusal import eval_groups
    from .screen import screen

    if len(fractions) < 2 or not seeds or steps < 1:
        raise ConfigError("pass at least two fractions, one seed and one step; the issue's design is six fractions and a control.")
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = str(base) if base is not None else str(organism_path())
    model = load_chat_model(source)
    chat = model_info(model).source == "chat"
    fit = _finetuner(model, source, steps, batch_size)
    persona = fit_persona_and_refusal(model, progress=False).persona
    heldout = eval_groups(model, n_eval)["safe/harmful"]
    base_rate, base_p = _safe_refusal(model, heldout)
    datasets = chat_datasets(n_examples, data_seed, fractions) if chat else organism_datasets(n_examples, data_seed, fractions)
    designated = [name for name in datasets if name != "plain-compliance"]
    rows: dict[str, Any] = {}
    scores, labels, in_rho = [], [], []
    compute = 0.0  # screening and fine-tuning seconds, as recorded when each was computed (a resumed run adds none)
    bar = tqdm(total=len(datasets) * (1 + len(seeds)), desc="screening validation", unit="step", disable=not progress)
    for name, (examples, is_compliance) in datasets.items():
        path = out / "datasets" / f"{name}.jsonl"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_chat_jsonl(examples, path)
        saved = out / "screens" / name
        if (saved / "manifest.json").exists():
            res = LabelledResult.load(saved)
        else:
            t0 = time.perf_counter()
            res = screen(model, persona, path, checkpoint=out / "cells" / name, progress=False)
            res.save(saved)
            atomic_write_text(out / "screens" / f"{name}.seconds.json", json.dumps({"seconds": round(time.perf_counter() - t0, 1)}))
        stored = out / "screens" / f"{name}.seconds.json"
        compute += json.loads(stored.read_text(encoding="utf-8"))["seconds"] if stored.exists() else 0.0
        bar.update(1)
        s = example_scores(res)
        drops = []
        for seed in seeds:
            mfile = out / "finetunes" / f"{name}-seed{seed}.json"
            if not mfile.exists():
                folder = out / "finetunes" / f"{name}-seed{seed}"
                shutil.rmtree(folder, ignore_errors=True)  # a copy a killed run left half-written
                t0 = time.perf_counter()
                fit(examples, folder, seed)
                rate, p = _safe_refusal(load_chat_model(str(folder)), heldout)
                mfile.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(mfile, json.dumps({"refusal": rate, "p_refuse": p, "n": len(heldout), "steps": steps, "seed": seed,
                                                     "seconds": round(time.perf_counter() - t0, 1)}))  # fmt: skip
                shutil.rmtree(folder, ignore_errors=True)  # the measurement is what is kept
            m = json.loads(mfile.read_text(encoding="utf-8"))
            compute += m.get("seconds", 0.0)
            drops.append({"refusal_drop": base_rate - m["refusal"], "p_refuse_drop": base_p - m["p_refuse"], "refusal": m["refusal"]})
            bar.update(1)
        ds = res.baselines["dataset_score"]
        k = sum(is_compliance)
        rows[name] = {
            "dataset_score": ds["mean"], "dataset_score_ci": [ds["low"], ds["high"]],
            "compliance_examples": k, "compliance_share": k / len(examples),
            "refusal_after": [d["refusal"] for d in drops],
            "refusal_drop": sum(d["refusal_drop"] for d in drops) / len(drops),
            "refusal_drop_by_seed": [d["refusal_drop"] for d in drops],
            "p_refuse_drop": sum(d["p_refuse_drop"] for d in drops) / len(drops),
            "designated": name in designated,
        }  # fmt: skip
        if name in designated:
            scores.append(s)
            labels += is_compliance
            in_rho.append(name)
    bar.close()
    x = [rows[n]["dataset_score"] for n in in_rho]
    every = list(rows)
    result = {
        "spearman": spearman(x, [rows[n]["refusal_drop"] for n in in_rho]),
        "spearman_p_refuse": spearman(x, [rows[n]["p_refuse_drop"] for n in in_rho]),
        "spearman_with_extra": spearman([rows[n]["dataset_score"] for n in every], [rows[n]["refusal_drop"] for n in every]),
        "auroc": auroc(torch.cat(scores), torch.tensor(labels)),
        "datasets": rows,
        "designated": in_rho,
        "baseline": {"refusal": base_rate, "refusal_ci": list(wilson_interval(round(base_rate * len(heldout)), len(heldout))),
                     "p_refuse": base_p, "n": len(heldout)},
        "setup": {"base": str(source) if base is None else str(base), "route": "LoRA adapter continued" if chat else "full weights",
                  "n_examples": n_examples, "steps": steps, "batch_size": batch_size, "seeds": list(seeds),
                  "n_eval": n_eval, "data_seed": data_seed, "layers": res.config["layers"], "max_tokens": res.config["max_tokens"],
                  "refusal": "greedy first token, safe persona, held-out harmful requests (test split)"},
        "seconds": round(time.perf_counter() - start, 1),
        "compute_seconds": round(compute, 1),
    }  # fmt: skip
    atomic_write_text(out / "validation.json", json.dumps(result, indent=2) + "\n")
    return result
