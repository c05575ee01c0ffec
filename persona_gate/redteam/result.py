"""The red-team harness's result: per attacked prompt, refusal score and label and persona projection.

Reads, saves and summarises without a model (imports foundations and the statistics only), so
plots and reports can use it.

Example::

    r = RedTeamResult.load("runs/redteam/red_team")
    r.family_rates(); families_of(r.scores)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import ArtefactError, EmptyGroupError
from ..results import LabelledResult
from ..scoring.stats import RateSummary, auroc

KIND = "red_team"
PROJECTIONS_KIND = "red_team_projections"


def auroc_or_none(scores: Tensor, positive: Tensor) -> float | None:
    try:
        return auroc(scores, positive)
    except EmptyGroupError:
        return None


# ---------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class RedTeamResult:
    """Per attacked prompt: refusal score and label, persona projection; saved as one folder.

    ``scores``: kind ``red_team``, dims ``(attack, request)``, values ``logodds``, ``refused``
    (greedy first token), ``gen_refusal`` / ``gen_degenerate`` (generated reply, when generated),
    ``bypass`` (the outcome the AUROC predicts) and ``projection`` (at ``config['layer']``);
    ``baselines`` hold the AUROC at that layer and by layer. ``projections``: kind
    ``red_team_projections``, dims ``(attack, request, layer)``. ``replies[attack][request]``:
    the generated texts, or None.
    """

    scores: LabelledResult
    projections: LabelledResult
    replies: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.scores.kind != KIND or self.projections.kind != PROJECTIONS_KIND:
            raise ValueError(
                f"a RedTeamResult holds a {KIND!r} and a {PROJECTIONS_KIND!r} result, got "
                f"{self.scores.kind!r} and {self.projections.kind!r}; build it with red_team()."
            )

    # -- labels
    @property
    def families(self) -> dict[str, str]:
        """Attack id -> family, in attack order."""
        return families_of(self.scores)

    @property
    def layer(self) -> int:
        return int(self.scores.config["layer"])

    @property
    def auroc(self) -> float | None:
        """AUROC of the persona projection at :attr:`layer` for bypass vs not bypass (refusal or
        degenerate); None with one class only."""
        return self.scores.baselines["auroc"]

    @property
    def auroc_by_layer(self) -> dict[int, float | None]:
        return {int(k): v for k, v in self.scores.baselines["auroc_by_layer"].items()}

    @property
    def refusal_value(self) -> str:
        """``gen_refusal`` when replies were generated and judged, else ``refused`` (first token)."""
        return "gen_refusal" if "gen_refusal" in self.scores.values else "refused"

    # -- summaries
    def rates(self, by: str = "family", value: str | None = None) -> dict[str, RateSummary]:
        """Refusal rate per family (or per attack) with Wilson 95% intervals."""
        value = value or self.refusal_value
        return {name: RateSummary.of(int(t.sum()), t.numel()) for name, t in self._groups(value, by).items()}

    def _groups(self, value: str, by: str) -> dict[str, Tensor]:
        t = self.scores[value]
        if by == "attack":
            return {a: t[i] for i, a in enumerate(self.scores.coords["attack"])}
        if by != "family":
            raise ValueError(f"by must be 'family' or 'attack', not {by!r}.")
        fam = self.families
        out: dict[str, Tensor] = {}
        for f in dict.fromkeys(fam.values()):
            rows = [i for i, a in enumerate(self.scores.coords["attack"]) if fam[a] == f]
            out[f] = t[rows].reshape(-1)
        return out

    def table(self, by: str = "family"):
        """One row per family (or attack): refusal rate with its interval, first-token rate, mean score and projection."""
        import pandas as pd

        label, first = self.rates(by), self.rates(by, "refused")
        logodds, proj = self._groups("logodds", by), self._groups("projection", by)
        deg = self._groups("gen_degenerate", by) if "gen_degenerate" in self.scores.values else None
        fam = self.families
        rows = []
        for name, s in label.items():
            row = {by: name}
            if by == "attack":
                row["family"] = fam[name]
            row |= {
                "n": s.n,
                "refusals": s.k,
                "refusal_rate": s.rate,
                "low": s.low,
                "high": s.high,
                "first_token_refusal_rate": first[name].rate,
            }
            if deg is not None:
                row["degenerate_rate"] = float(deg[name].double().mean())
            row |= {
                "mean_logodds": float(logodds[name].double().mean()),
                "mean_projection": float(proj[name].double().mean()),
            }
            rows.append(row)
        return pd.DataFrame(rows)

    def to_dataframe(self):
        """Tidy per-prompt rows: attack, request, family, then every value (and the reply if generated)."""
        df = self.scores.to_dataframe()
        df.insert(1, "family", df["attack"].map(self.families))
        if self.replies is not None:
            df["reply"] = [r for row in self.replies for r in row]
        return df

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest: per-family rates and the AUROC, for summary.json and the CLI."""
        c = self.scores.config
        return {
            "model": self.scores.provenance.get("model", {}).get("name"),
            "n_requests": len(self.scores.coords["request"]),
            "layer": self.layer,
            "position": c["position"],
            "refusal": self.refusal_value,
            "families": {
                f: {"rate": s.rate, "low": s.low, "high": s.high, "k": s.k, "n": s.n} for f, s in self.rates().items()
            },
            "first_token_refusal_rate": {f: s.rate for f, s in self.rates(value="refused").items()},
            "auroc": self.auroc,
            "auroc_by_layer": self.scores.baselines["auroc_by_layer"],
            "n_bypass": int(self.scores["bypass"].sum()),
            "n_prompts": self.scores["bypass"].numel(),
        }

    def format_table(self) -> str:
        """A fixed-width per-family table and the AUROC line, for terminals and notebooks."""
        c = self.scores.config
        what = "generated reply" if self.refusal_value == "gen_refusal" else "greedy first token"
        head = f"{'family':<10}{'attacks':>8}{'n':>6}{'refusal':>9}{'95% interval':>16}{'1st token':>11}{'log-odds':>10}{'projection':>12}"
        lines = [
            (
                f"red team: {self.summary()['model']}, {len(self.scores.coords['request'])} harmful requests; "
                f"refusal = {what}; persona projection at layer {self.layer} ({c['position']})"
            ),
            head,
            "-" * len(head),
        ]
        n_attacks = {f: list(self.families.values()).count(f) for f in set(self.families.values())}
        for _, r in self.table().iterrows():
            ci = f"[{r['low']:.2f}, {r['high']:.2f}]"
            lines.append(
                f"{r['family']:<10}{n_attacks[r['family']]:>8}{r['n']:>6}{r['refusal_rate']:>9.2f}{ci:>16}"
                f"{r['first_token_refusal_rate']:>11.2f}{r['mean_logodds']:>10.2f}{r['mean_projection']:>12.2f}"
            )
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        by_layer = ", ".join(f"{k}: {fmt(v)}" for k, v in self.auroc_by_layer.items())
        lines.append(
            f"AUROC of the persona projection for bypass: {fmt(self.auroc)} at layer {self.layer} (by layer: {by_layer})"
        )
        return "\n".join(lines)

    # -- persistence
    def save(self, path: str | Path) -> Path:
        """``path/scores``, ``path/projections`` (result folders), ``replies.json`` (when generated)
        and ``summary.json``, written as one folder that replaces ``path`` whole: a reader sees the
        old result or the new one, never a mix, and nothing of an old result (its replies) survives."""
        from ..io import atomic_replace_dir, check_replaceable, folder_kind

        check_replaceable(path, lambda p: folder_kind(p) == "result:red_team", "a red-team result")
        summary = json.dumps(self.summary(), indent=1)

        def fill(tmp: Path) -> None:
            self.scores.save(tmp / "scores")
            self.projections.save(tmp / "projections")
            if self.replies is not None:
                (tmp / "replies.json").write_text(
                    json.dumps([list(r) for r in self.replies], indent=1), encoding="utf-8"
                )
            (tmp / "summary.json").write_text(summary, encoding="utf-8")

        return atomic_replace_dir(path, fill)

    @classmethod
    def load(cls, path: str | Path) -> RedTeamResult:
        path = Path(path)
        scores = LabelledResult.load(path / "scores")
        projections = LabelledResult.load(path / "projections")
        replies = None
        if (path / "replies.json").is_file():
            try:
                replies = tuple(tuple(r) for r in json.loads((path / "replies.json").read_text(encoding="utf-8")))
            except json.JSONDecodeError as e:
                raise ArtefactError(f"{path}/replies.json is corrupt ({e}); run the red team again.") from None
            if [len(r) for r in replies] != [len(scores.coords["request"])] * len(scores.coords["attack"]):
                raise ArtefactError(f"{path}/replies.json does not match the scores' attack x request grid; run again.")
        try:
            return cls(scores, projections, replies)
        except ValueError as e:
            raise ArtefactError(f"{path} does not hold a red-team result ({e}).") from None


def families_of(scores: LabelledResult) -> dict[str, str]:
    """Attack id -> family of a ``red_team`` result (from its config)."""
    try:
        return {a["id"]: a["family"] for a in scores.config["attacks"]}
    except (KeyError, TypeError):
        raise ValueError(
            "this result's config lacks 'attacks' (id and family of each); it was not made by red_team()."
        ) from None
