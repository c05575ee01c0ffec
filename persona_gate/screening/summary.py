"""Reading a screening result without a model: example scores, the dataset score, the ranking.

Example::

    res = LabelledResult.load("runs/screen/screening")
    print(format_screening(res, k=5)); example_scores(res); res.baselines["dataset_score"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..results import LabelledResult
from ..scoring.stats import mean_interval

KIND = "screening"


def example_scores(res: LabelledResult) -> torch.Tensor:
    """Each example's score: ``score`` averaged over the layers the screening chose (``config.layers``)."""
    cols = [res.coords["layer"].index(layer) for layer in res.config["layers"]]
    return res["score"][:, cols].double().mean(-1).float()


def dataset_score(scores: torch.Tensor) -> dict[str, Any]:
    """Mean example score with a normal 95% interval (``mean +- 1.96 sd / sqrt(n)``, :func:`mean_interval`)."""
    mean, low, high, n = (float(x) for x in mean_interval(scores))
    return {"mean": mean, "low": low, "high": high, "n": int(n)}


def summarise(res: LabelledResult, top: int = 20) -> dict[str, Any]:
    """The baselines a screening result carries: the dataset score and the top-ranked examples."""
    s = example_scores(res)
    order = torch.argsort(s, descending=True, stable=True).tolist()
    info = res.config.get("examples", [])
    ranked = [
        {
            "rank": r + 1,
            "id": res.coords["example"][i],
            "score": float(s[i]),
            **({k: info[i][k] for k in ("line", "user", "reply")} if i < len(info) else {}),
        }
        for r, i in enumerate(order[:top])
    ]
    return {"dataset_score": dataset_score(s), "top": ranked, "share_positive": float((s > 0).double().mean())}


def screening_summary(res: LabelledResult, validation: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``persona-gate screen`` writes to ``summary.json``."""
    ds = res.baselines["dataset_score"]
    return {
        "dataset_score": ds["mean"],
        "dataset_score_ci": [ds["low"], ds["high"]],
        "n": ds["n"],
        "layers": res.config["layers"],
        "share_positive": res.baselines.get("share_positive"),
        "top": res.baselines.get("top", [])[:10],
        "spearman": None if validation is None else validation.get("spearman"),
        **({} if validation is None else {"validation": validation}),
    }


def format_screening(res: LabelledResult, k: int = 5) -> str:
    ds = res.baselines["dataset_score"]
    layers = res.config["layers"]
    lines = [
        f"screening: {ds['n']} examples along {res.config.get('persona')} at layers {layers[0]}-{layers[-1]}"
        if layers == list(range(layers[0], layers[-1] + 1))
        else f"screening: {ds['n']} examples at layers {layers}",
        f"dataset score {ds['mean']:+.4f} [{ds['low']:+.4f}, {ds['high']:+.4f}] (95%; > 0: pushes toward compliance "
        f"where the model refuses); {res.baselines.get('share_positive', float('nan')):.0%} of examples score > 0",
        "",
        f"most compliance-pushing examples (top {k}):",
    ]
    for row in res.baselines.get("top", [])[:k]:
        user = str(row.get("user", "")).replace("\n", " ")
        reply = str(row.get("reply", "")).replace("\n", " ")
        lines.append(f"  {row['rank']:>3}. {row['score']:+.4f}  {row['id']}: {user[:50]!r} -> {reply[:40]!r}")
    return "\n".join(lines)


def format_validation(v: Mapping[str, Any]) -> str:
    """A screening validation (a :class:`~persona_gate.screening.validation.ScreeningValidation` or its JSON form) as text."""
    b = v["baseline"]
    lines = [
        f"screening validation: {len(v['designated'])} datasets, {v['setup']['steps']} steps x seeds {v['setup']['seeds']}; "
        f"safe-persona refusal before fine-tuning {b['refusal']:.2f} (n {b['n']})",
        f"{'dataset':<18} {'score':>8} {'95% interval':>20} {'compliance':>10} {'refusal drop':>12} {'by seed':>18}",
    ]
    for name, r in v["datasets"].items():
        seeds = " ".join(f"{d:+.2f}" for d in r["refusal_drop_by_seed"])
        lines.append(
            f"{name + ('' if r['designated'] else ' *'):<18} {r['dataset_score']:>+8.4f} "
            f"[{r['dataset_score_ci'][0]:+.4f}, {r['dataset_score_ci'][1]:+.4f}] {r['compliance_share']:>10.2f} "
            f"{r['refusal_drop']:>+12.2f} {seeds:>18}"
        )
    lines.append(
        f"Spearman rho (score vs refusal drop) {v['spearman']:.3f}; with P(refuse) drop {v['spearman_p_refuse']:.3f}; "
        f"per-example AUROC {v['auroc']:.3f}"
    )
    if any(not r["designated"] for r in v["datasets"].values()):
        lines.append(f"* not in rho (what the score cannot see); rho with it: {v['spearman_with_extra']:.3f}")
    return "\n".join(lines)
