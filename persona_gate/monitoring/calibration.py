"""Calibrating the persona-drift monitor: thresholds on persona distributions, rates on held-out chats.

Conversations under a safe and under a compliant persona (system prompt; the standard persona
and request sets, answered by the model's own greedy replies) are read like any monitored
conversation (:mod:`persona_gate.monitoring.readings`) and projected on the unit persona direction.
On the train split -- by default single-turn chats, i.e. the persona distributions the
directions were fitted on -- one threshold per (reading, layer) maximises TPR - FPR (ties: the
widest gap between neighbouring values) or, with ``target_fpr``, is the lowest whose train FPR
stays within it. A turn is flagged when ``x . persona > threshold``. The held-out split -- by
default multi-turn conversations -- gives the rates reported: FPR over safe-persona turns and
conversations (a conversation counts once any of its turns is flagged), TPR over compliant ones.

Every rate is recounted from the stored per-turn projections, never stored alone.

Example::

    cal = calibrate(model, pr.persona)         # default flag: the reply mean at the best train layer
    print(format_calibration(cal))             # threshold, held-out FPR / TPR with counts and 95% CIs
    cal.save("runs/monitor/calibration"); MonitorCalibration.load("runs/monitor/calibration")
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..core.directions import DirectionSet
from ..core.generation import converse_many
from ..errors import ConfigError, ConversationError, UnknownHookSiteError
from ..models.profile import profile_of
from ..models.protocol import ChatModel
from ..prompts.conversation import Conversation, Turn
from ..results import LabelledResult
from ..scoring.stats import RateSummary
from ..sites import HookSite
from .readings import (
    READINGS,
    as_conversation,
    direction_sites,
    fingerprint,
    project_turns,
    turn_activations,
    unit_vectors,
)

FAMILIES: tuple[str, ...] = ("safe", "compliant")
SPLITS: tuple[str, ...] = ("train", "test")


def _threshold(safe: Tensor, compliant: Tensor, target_fpr: float | None) -> float:
    """Flag ``x > threshold``. Max TPR - FPR on these values (ties: the widest gap), or, with
    ``target_fpr``, the lowest threshold whose FPR on ``safe`` is at most ``target_fpr``."""
    s, c = safe[torch.isfinite(safe)].double(), compliant[torch.isfinite(compliant)].double()
    if len(s) == 0 or len(c) == 0:
        return float("nan")
    v = torch.unique(torch.cat([s, c]))  # sorted
    span = float(v[-1] - v[0]) or 1.0
    cands = torch.cat([v[:1] - span / 2, (v[1:] + v[:-1]) / 2, v[-1:] + span / 2])
    gaps = torch.cat([torch.tensor([span], dtype=v.dtype), v[1:] - v[:-1], torch.tensor([span], dtype=v.dtype)])
    fpr = (s[None, :] > cands[:, None]).double().mean(1)
    tpr = (c[None, :] > cands[:, None]).double().mean(1)
    if target_fpr is not None:
        return float(cands[fpr <= target_fpr + 1e-12][0])
    j = tpr - fpr
    if float(j.max()) <= 0:  # no threshold tells the personas apart here: flag nothing
        return float(cands[-1])
    best = torch.nonzero(j >= j.max() - 1e-12).flatten()
    return float(cands[best[torch.argmax(gaps[best])]])


def _separation(safe: Tensor, compliant: Tensor) -> float:
    """d' = (mean_c - mean_s) / pooled sd: the tie-breaker between equally accurate (reading, layer)s."""
    s, c = safe[torch.isfinite(safe)].double(), compliant[torch.isfinite(compliant)].double()
    if len(s) < 2 or len(c) < 2:
        return float("-inf")
    sd = math.sqrt((s.var() + c.var()) / 2) or 1e-12
    return float((c.mean() - s.mean()) / sd)


@dataclass(frozen=True)
class MonitorCalibration:
    """Per-(reading, layer) thresholds, the calibration turns' persona projections and the flag choice.

    ``projections[sample, reading, site]`` holds every calibration turn (``split``, ``family``,
    ``conversation`` and ``turn`` label each sample), so every rate is a recount, never a
    stored number.
    """

    sites: tuple[HookSite, ...]
    thresholds: Float[Tensor, "reading site"]
    projections: Float[Tensor, "sample reading site"]
    split: tuple[str, ...]
    family: tuple[str, ...]
    conversation: tuple[int, ...]
    turn: tuple[int, ...]
    flag_reading: str
    flag_layer: int
    persona: str
    persona_fingerprint: str
    conversations: Mapping[str, tuple[Conversation, ...]] = field(default_factory=dict, compare=False)
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = self.projections.shape[0]
        if self.projections.shape[1:] != (len(READINGS), len(self.sites)) or self.thresholds.shape != (
            len(READINGS),
            len(self.sites),
        ):
            raise ConfigError("projections/thresholds do not match the readings x sites of this calibration.")
        if not all(len(x) == n for x in (self.split, self.family, self.conversation, self.turn)):
            raise ConfigError("every calibration sample needs a split, family, conversation and turn label.")
        if self.flag_reading not in READINGS or self.flag_layer not in self.layers:
            raise ConfigError(
                f"flag ({self.flag_reading}, layer {self.flag_layer}) is not a reading x layer of this calibration."
            )

    @property
    def layers(self) -> list[int]:
        return [s.layer for s in self.sites]

    def threshold(self, layer: int | None = None, reading: str | None = None) -> float:
        """The threshold at ``layer`` / ``reading`` (default: the flag's)."""
        layer = self.flag_layer if layer is None else layer
        reading = self.flag_reading if reading is None else reading
        if layer not in self.layers or reading not in READINGS:
            raise UnknownHookSiteError(
                f"no threshold at ({reading}, layer {layer}); layers {self.layers}, readings {READINGS}."
            )
        return float(self.thresholds[READINGS.index(reading), self.layers.index(layer)])

    def _mask(self, split: str, family: str) -> Tensor:
        return torch.tensor([s == split and f == family for s, f in zip(self.split, self.family)], dtype=torch.bool)

    def rates(self) -> LabelledResult:
        """Counts and rates per (split, reading, layer): turn-level FPR (safe) / TPR (compliant),
        and conversation-level ones (a conversation counts as flagged when any of its turns is).

        Only readings that exist count: a pending turn has no reply mean, and a conversation
        counts only where at least one of its turns has the reading. ``k_*`` (flagged) and
        ``n_*`` (counted) are integer counts; a rate with ``n == 0`` is NaN.
        """
        shape = (len(SPLITS), len(READINGS), len(self.sites))
        out = {
            k: torch.full(shape, float("nan"), dtype=torch.float64)
            for k in ("fpr", "tpr", "fpr_conversation", "tpr_conversation")
        }
        out.update(
            {
                k: torch.zeros(shape, dtype=torch.int64)
                for k in (
                    "k_safe",
                    "n_safe",
                    "k_compliant",
                    "n_compliant",
                    "k_safe_conversations",
                    "n_safe_conversations",
                    "k_compliant_conversations",
                    "n_compliant_conversations",
                )
            }
        )
        finite = torch.isfinite(self.projections)
        flagged = (self.projections > self.thresholds[None]) & finite  # NaN compares False anyway
        conversation = torch.tensor(self.conversation, dtype=torch.long)
        for i, split in enumerate(SPLITS):
            for fam, rate in (("safe", "fpr"), ("compliant", "tpr")):
                m = self._mask(split, fam)
                f, ok, ids = flagged[m], finite[m], conversation[m]
                # [conversation, reading, site]: any of its turns flagged / any of its turns has the reading
                f_conv = torch.stack([f[ids == c].any(0) for c in ids.unique()]) if len(ids) else f
                ok_conv = torch.stack([ok[ids == c].any(0) for c in ids.unique()]) if len(ids) else ok
                for name, counts, hit, have in (
                    (rate, fam, f, ok),
                    (f"{rate}_conversation", f"{fam}_conversations", f_conv, ok_conv),
                ):
                    k, n = hit.sum(0), have.sum(0)
                    out[f"k_{counts}"][i], out[f"n_{counts}"][i] = k, n
                    out[name][i] = torch.where(n > 0, k.double() / n.clamp_min(1), float("nan"))
        return LabelledResult(
            "monitor_calibration",
            ("split", "reading", "layer"),
            {"split": SPLITS, "reading": READINGS, "layer": tuple(self.layers)},
            out,
            baselines={
                "threshold": {f"{r}/{layer}": self.threshold(layer, r) for r in READINGS for layer in self.layers},
                "flag_reading": self.flag_reading,
                "flag_layer": self.flag_layer,
            },
            metric={"name": "flag rate", "higher_means": "flagged more often (x . persona > threshold)"},
            config={**self.config, "persona": self.persona},
            provenance=self.provenance,
        )

    def flagged(self, split: str = "test", family: str = "safe") -> list[tuple[Conversation, Turn, float]]:
        """The flagged turns of one group, with their conversation and persona projection: on
        ``("test", "safe")`` these are the false positives, to read what the model said."""
        if f"{split}/{family}" not in self.conversations:
            raise ConversationError(
                f"this calibration keeps no {split}/{family} conversations; it holds {sorted(self.conversations)}."
            )
        convs = self.conversations[f"{split}/{family}"]
        r, i = READINGS.index(self.flag_reading), self.layers.index(self.flag_layer)
        out = []
        for k, (sp, fam, c, t) in enumerate(zip(self.split, self.family, self.conversation, self.turn)):
            x = float(self.projections[k, r, i])
            if sp == split and fam == family and x > self.threshold():
                out.append((convs[c], convs[c].turns[t - 1], x))
        return out

    def summary(self) -> dict[str, Any]:
        """The flag's threshold and its train / held-out FPR / TPR with counts and Wilson 95% intervals.

        A group without a single reading (e.g. held-out chats that all end on a user message,
        under the reply-mean flag) gets ``{"rate": None, "k": 0, "n": 0}``.
        """
        r = self.rates().sel(reading=self.flag_reading, layer=self.flag_layer)
        out: dict[str, Any] = {"reading": self.flag_reading, "layer": self.flag_layer, "threshold": self.threshold()}
        for split in SPLITS:
            row = r.sel(split=split)
            for rate, counts in (
                ("fpr", "safe"),
                ("tpr", "compliant"),
                ("fpr_conversation", "safe_conversations"),
                ("tpr_conversation", "compliant_conversations"),
            ):
                k, n = int(row[f"k_{counts}"]), int(row[f"n_{counts}"])
                if n > 0:
                    rs = RateSummary.of(k, n)
                    entry = {"rate": rs.rate, "k": rs.k, "n": rs.n, "ci95": [rs.low, rs.high]}
                else:
                    entry = {"rate": None, "k": 0, "n": 0}
                out[f"{split}_{rate}"] = entry
        return out

    def save(self, path: str | Path) -> Path:
        from ..io import save_artefact

        manifest = {
            "sites": [str(s) for s in self.sites],
            "readings": list(READINGS),
            "split": list(self.split),
            "family": list(self.family),
            "conversation": list(self.conversation),
            "turn": list(self.turn),
            "flag_reading": self.flag_reading,
            "flag_layer": self.flag_layer,
            "persona": self.persona,
            "persona_fingerprint": self.persona_fingerprint,
            "conversations": {k: [c.to_messages() for c in v] for k, v in self.conversations.items()},
            "config": self.config,
            "summary": self.summary(),  # for readers of the folder; load() recounts from the tensors
            "provenance": self.provenance,
        }
        tensors = {"thresholds": self.thresholds.double(), "projections": self.projections.double()}
        return save_artefact(path, "monitor_calibration", tensors, manifest)

    @classmethod
    def load(cls, path: str | Path) -> MonitorCalibration:
        from ..errors import ArtefactError
        from ..io import load_artefact
        from ..sites import parse_site

        m, t = load_artefact(path, "monitor_calibration")
        try:
            return cls(
                sites=tuple(parse_site(s) for s in m["sites"]),
                thresholds=t["thresholds"],
                projections=t["projections"],
                split=tuple(m["split"]),
                family=tuple(m["family"]),
                conversation=tuple(int(x) for x in m["conversation"]),
                turn=tuple(int(x) for x in m["turn"]),
                flag_reading=m["flag_reading"],
                flag_layer=int(m["flag_layer"]),
                persona=m["persona"],
                persona_fingerprint=m["persona_fingerprint"],
                conversations={
                    k: tuple(Conversation.from_messages(msgs, name=f"{k}/{i}") for i, msgs in enumerate(v))
                    for k, v in m.get("conversations", {}).items()
                },
                config=m.get("config", {}),
                provenance=m.get("provenance", {}),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise ArtefactError(
                f"{path} is not a valid monitor calibration ({e}); calibrate and save it again."
            ) from None


def _calibration_sets(model: ChatModel, family: str, split: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    """Persona texts of ``family`` and a shuffled mix of harmful and harmless requests (``n`` of them)."""
    sets = profile_of(model).prompt_sets
    personas = [p.text for p in sets.personas(family, split, seed)]
    half = (n + 1) // 2
    reqs = [r.text for kind in ("harmful", "harmless") for r in sets.requests(kind, split, half, seed)]
    rng = random.Random(f"{seed}/{family}/{split}/monitor")
    rng.shuffle(reqs)
    return personas, [reqs[i % len(reqs)] for i in range(n)]


def calibration_conversations(
    model: ChatModel,
    family: str,
    *,
    split: str = "train",
    n: int = 16,
    n_turns: int = 3,
    max_new_tokens: int = 40,
    seed: int = 0,
    batch_size: int = 16,
) -> list[Conversation]:
    """``n`` conversations under ``family``'s persona (system prompt), ``n_turns`` requests each
    (harmful and harmless mixed), answered by the model's own greedy replies."""
    if family not in FAMILIES:
        raise ConfigError(f"family must be one of {FAMILIES}, got {family!r}.")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}.")
    if n < 1 or n_turns < 1:
        raise ConfigError(f"need n >= 1 conversations of n_turns >= 1 turns, got n={n}, n_turns={n_turns}.")
    personas, requests = _calibration_sets(model, family, split, n * n_turns, seed)
    scripts = [(personas[i % len(personas)], requests[i * n_turns : (i + 1) * n_turns]) for i in range(n)]
    return converse_many(
        model,
        scripts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        names=[f"{split}/{family}/{i}" for i in range(n)],
    )


@dataclass(frozen=True)
class CalibrationSettings:
    """How a calibration builds and reads its conversations (every setting but the data itself).

    ``n_train`` single-turn chats per persona (``train_turns`` turns) set the thresholds; ``n_test``
    held-out conversations of ``test_turns`` turns give the rates; replies of at most
    ``max_new_tokens``. The flag reads ``flag_reading`` ("response": the reply mean; "start": the
    response-start token) at ``flag_layer`` (default: the best train TPR - FPR, ties: the larger
    separation d'), with its threshold at ``target_fpr`` on the train split (default: max TPR - FPR).
    """

    n_train: int = 32
    train_turns: int = 1
    n_test: int = 16
    test_turns: int = 3
    max_new_tokens: int = 40
    target_fpr: float | None = None
    flag_reading: str = "response"
    flag_layer: int | None = None
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.target_fpr is not None and not 0.0 <= self.target_fpr < 1.0:
            raise ConfigError(f"target_fpr must lie in [0, 1), got {self.target_fpr}.")
        if self.flag_reading not in READINGS:
            raise ConfigError(f"flag_reading must be one of {READINGS}, got {self.flag_reading!r}.")

    @classmethod
    def of(cls, settings: CalibrationSettings | None, overrides: Mapping[str, Any]) -> CalibrationSettings:
        import dataclasses

        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"calibrate() got unknown settings {unknown}; the settings are {sorted(known)}.")
        return dataclasses.replace(settings or cls(), **overrides)


def calibrate(
    model: ChatModel,
    persona: DirectionSet,
    *,
    layers: Sequence[int] | None = None,
    train: Mapping[str, Sequence[Conversation]] | None = None,
    test: Mapping[str, Sequence[Conversation]] | None = None,
    settings: CalibrationSettings | None = None,
    progress: bool = True,
    **overrides: Any,
) -> MonitorCalibration:
    """Thresholds from the train split's safe vs compliant persona turns; rates on held-out conversations.

    ``train`` / ``test`` map ``"safe"`` and ``"compliant"`` to conversations; by default
    :func:`calibration_conversations` builds them from the model profile's persona and request
    sets. ``settings`` (a :class:`CalibrationSettings`) and keyword overrides of its fields
    (``n_train=16``, ``target_fpr=0.05``, ...) say how.
    """
    cfg = CalibrationSettings.of(settings, overrides)
    persona.check_model(model)
    sites = direction_sites(persona, layers)
    if cfg.flag_layer is not None and cfg.flag_layer not in [s.layer for s in sites]:
        raise UnknownHookSiteError(
            f"flag_layer {cfg.flag_layer} is not among the calibrated layers {[s.layer for s in sites]}."
        )
    given = {"train": train, "test": test}
    bar = tqdm(total=len(SPLITS) * len(FAMILIES) + 1, desc="calibrating", unit="step", disable=not progress)
    try:
        groups = _conversation_groups(model, given, cfg, bar)
        keys = list(groups)
        acts = turn_activations(model, [c for k in keys for c in groups[k]], sites, batch_size=cfg.batch_size)
        bar.update(1)
    finally:
        bar.close()
    projections, labels = _labelled_projections(acts, groups, unit_vectors(persona, sites))
    is_train = torch.tensor([x[0] == "train" for x in labels])
    safe = is_train & torch.tensor([x[1] == "safe" for x in labels])
    comp = is_train & torch.tensor([x[1] == "compliant" for x in labels])
    thresholds = _train_thresholds(projections[safe], projections[comp], len(sites), cfg.target_fpr)
    flag_layer = _flag_layer(sites, projections[safe], projections[comp], thresholds, cfg)
    from ..models.loading import provenance

    config = _calibration_config(groups, given, cfg)
    return MonitorCalibration(
        sites=sites,
        thresholds=thresholds,
        projections=projections,
        split=tuple(x[0] for x in labels),
        family=tuple(x[1] for x in labels),
        conversation=tuple(x[2] for x in labels),
        turn=tuple(x[3] for x in labels),
        flag_reading=cfg.flag_reading,
        flag_layer=flag_layer,
        persona=f"{persona.name}@{persona.position}",
        persona_fingerprint=fingerprint(persona, sites),
        conversations={f"{s}/{f}": tuple(groups[(s, f)]) for s, f in keys},
        config=config,
        provenance=provenance(model, seed=cfg.seed, config=config),
    )


def _labelled_projections(
    acts: Sequence[Any], groups: dict[tuple[str, str], list[Conversation]], unit: Tensor
) -> tuple[Tensor, list[tuple[str, str, int, int]]]:
    """Every turn's projections ``[sample, reading, site]`` on the unit directions ``unit``, and its
    ``(split, family, conversation, turn)``; ``acts`` holds the conversations of ``groups`` in order."""
    proj, labels = [], []
    it = iter(acts)
    for split, fam in groups:
        for ci in range(len(groups[(split, fam)])):
            ta = next(it)
            proj.append(project_turns(ta.acts, unit))
            labels += [(split, fam, ci, t.index) for t in ta.conversation.turns]
    return torch.cat(proj), labels


def _train_thresholds(safe: Tensor, comp: Tensor, n_sites: int, target_fpr: float | None) -> Tensor:
    """One threshold per (reading, site) between the train split's safe and compliant projections."""
    return torch.tensor(
        [[_threshold(safe[:, r, i], comp[:, r, i], target_fpr) for i in range(n_sites)] for r in range(len(READINGS))],
        dtype=torch.float64,
    )


def _calibration_config(
    groups: dict[tuple[str, str], list[Conversation]],
    given: Mapping[str, Mapping[str, Sequence[Conversation]] | None],
    cfg: CalibrationSettings,
) -> dict[str, Any]:
    """What the calibration ran on: conversation counts, the turns of the generated splits, the settings."""
    shape = {"train": cfg.train_turns, "test": cfg.test_turns}
    return {
        "n_conversations": {f"{s}/{f}": len(groups[(s, f)]) for s, f in groups},
        "turns": {s: shape[s] for s in SPLITS if given[s] is None},
        "max_new_tokens": cfg.max_new_tokens,
        "target_fpr": cfg.target_fpr,
        "seed": cfg.seed,
        "generated": {s: given[s] is None for s in SPLITS},
    }


def _conversation_groups(
    model: ChatModel,
    given: Mapping[str, Mapping[str, Sequence[Conversation]] | None],
    cfg: CalibrationSettings,
    bar: Any,
) -> dict[tuple[str, str], list[Conversation]]:
    """The conversations of every (split, persona family): the given ones, or played by the model."""
    shape = {"train": (cfg.n_train, cfg.train_turns), "test": (cfg.n_test, cfg.test_turns)}
    groups: dict[tuple[str, str], list[Conversation]] = {}
    for split in SPLITS:
        for fam in FAMILIES:
            mine = given[split]
            if mine is not None:
                if fam not in mine:
                    raise ConversationError(
                        f"{split} lacks {fam!r} conversations; pass {{'safe': [...], 'compliant': [...]}}."
                    )
                groups[(split, fam)] = [as_conversation(c) for c in mine[fam]]
            else:
                n, turns = shape[split]
                groups[(split, fam)] = calibration_conversations(
                    model,
                    fam,
                    split=split,
                    n=n,
                    n_turns=turns,
                    max_new_tokens=cfg.max_new_tokens,
                    seed=cfg.seed,
                    batch_size=cfg.batch_size,
                )
            if not groups[(split, fam)]:
                raise ConversationError(f"no {split} {fam} conversations; pass at least one per group.")
            bar.update(1)
    return groups


def _flag_layer(
    sites: Sequence[HookSite], safe: Tensor, comp: Tensor, thresholds: Tensor, cfg: CalibrationSettings
) -> int:
    """The flag's layer: the given one, or the best train TPR - FPR (ties: the larger separation d')."""
    r = READINGS.index(cfg.flag_reading)
    best = None
    for i, s in enumerate(sites):
        if cfg.flag_layer not in (None, s.layer) or not math.isfinite(thresholds[r, i]):
            continue
        sp, cp = safe[:, r, i], comp[:, r, i]
        rate = lambda x: (x[torch.isfinite(x)] > thresholds[r, i]).double().mean()  # noqa: E731
        key = (round(float(rate(cp) - rate(sp)), 9), _separation(sp, cp))
        if best is None or key > best[0]:
            best = (key, s.layer)
    if best is None:
        raise ConversationError(
            f"no train turn has a {cfg.flag_reading} reading to threshold (every reply empty?); give conversations with replies."
        )
    return best[1]


def format_calibration(calibration: MonitorCalibration) -> str:
    """Two lines: the flag's threshold and its train / held-out rates with counts."""
    s = calibration.summary()

    def rate(e: dict) -> str:
        if not e["n"]:
            return "n/a (0/0: no reading to count)"
        ci = e.get("ci95")
        return f"{e['rate']:.2f} ({e['k']}/{e['n']}" + (f", 95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else ")")

    return (
        f"calibration: flag persona@{s['reading']} > {s['threshold']:.3f} at layer {s['layer']} ({calibration.persona})\n"
        f"  held-out: FPR {rate(s['test_fpr'])} safe-persona turns, {rate(s['test_fpr_conversation'])} safe conversations; "
        f"TPR {rate(s['test_tpr'])} compliant-persona turns\n"
        f"  train:    FPR {rate(s['train_fpr'])}, TPR {rate(s['train_tpr'])}"
    )
