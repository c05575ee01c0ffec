"""The persona-drift monitor: persona and refusal projections per turn of a conversation, flagged.

For every turn ``k`` of a conversation (each assistant reply, plus a pending reply when the
conversation ends with a user message) and every chosen layer ``l`` the monitor reads the
residual stream ``x`` (at the direction sets' site kind, ``resid_pre`` by default) at two
places and projects it on the unit persona and refusal directions:

    persona_start[k, l]    = x_l(start_k) . p_l          refusal_start[k, l]    = x_l(start_k) . r_l
    persona_response[k, l] = mean_t x_l(t) . p_l         refusal_response[k, l] = mean_t x_l(t) . r_l

where ``start_k`` is the token at which the turn's first reply token is predicted and ``t`` runs
over the reply's tokens (NaN for a pending or empty reply). Signs follow the directions: persona
> 0 is "more like the compliant persona" (compliant - safe), refusal > 0 "more like a harmful
request under the safe persona".

A turn is *flagged* when its persona projection exceeds a threshold calibrated by
:func:`~persona_gate.monitoring.calibration.calibrate` on safe- and compliant-persona chats, which
also reports the held-out false-positive rate on safe-persona conversations. The flag uses one
reading (the reply mean by default) at one layer.

Long conversations are not re-run per turn: one forward over the rendered conversation gives
every turn's activations, equal to per-prefix forwards under causal attention (see
:mod:`persona_gate.monitoring.readings`; tested to 1e-4).

Example::

    cal = calibrate(model, pr.persona)                       # thresholds + held-out FPR / TPR
    res = monitor(model, "chat.jsonl", pr.persona, pr.refusal, calibration=cal)
    print(format_monitor(res)); flagged_turns(res)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.directions import DirectionSet
from ..errors import ConfigError, DModelMismatchError, UnknownHookSiteError
from ..models.protocol import ChatModel
from ..prompts.conversation import Conversation
from ..results import LabelledResult
from ..sites import HookSite
from . import readings
from .calibration import MonitorCalibration

KIND = "persona_monitor"


def check_roles(persona: DirectionSet, refusal: DirectionSet) -> None:
    """Refuse a persona and a refusal set passed the wrong way round (their sign conventions say which is which).

    A persona direction contrasts personas (its groups name ``compliant``/``safe``); a refusal
    direction contrasts requests (``harmful`` - ``harmless``) under one persona.
    """

    def contrasts_requests(ds: DirectionSet) -> bool:
        return "harmless" in ds.negative and "harmless" not in ds.positive

    def contrasts_personas(ds: DirectionSet) -> bool:
        return "compliant" in ds.positive and "safe" in ds.negative

    if contrasts_requests(persona) and contrasts_personas(refusal):
        raise ConfigError(
            f"the persona and refusal sets are swapped: {persona.name!r} is {persona.positive} - {persona.negative} (a "
            f"refusal contrast) and {refusal.name!r} is {refusal.positive} - {refusal.negative} (a persona contrast); "
            "pass monitor(model, conversation, persona, refusal) in that order."
        )


def _monitor_sites(
    model: ChatModel,
    persona: DirectionSet,
    refusal: DirectionSet,
    layers: Sequence[int] | None,
    calibration: MonitorCalibration | None,
) -> tuple[HookSite, ...]:
    """The sites :func:`monitor` reads (the calibration's layers by default), checked against both sets and the calibration."""
    check_roles(persona, refusal)
    persona.check_model(model)
    refusal.check_model(model)
    if layers is None and calibration is not None:
        layers = calibration.layers
    sites = readings.direction_sites(persona, layers)
    missing = [str(s) for s in sites if s not in refusal.sites]
    if missing:
        raise UnknownHookSiteError(
            f"the refusal set {refusal.name!r} lacks {missing}; fit persona and refusal at the same sites "
            "(fit_persona_and_refusal does) or pass layers both hold."
        )
    if refusal.d_model != persona.d_model:
        raise DModelMismatchError("persona and refusal directions have different widths; fit both on this model.")
    if calibration is not None:
        not_cal = [s.layer for s in sites if s not in calibration.sites]
        if not_cal:
            raise UnknownHookSiteError(
                f"layers {not_cal} were not calibrated (calibrated: {calibration.layers}); calibrate them or drop them."
            )
        if readings.fingerprint(persona, calibration.sites) != calibration.persona_fingerprint:
            raise DModelMismatchError(
                f"the calibration was made with another persona direction ({calibration.persona}); calibrate "
                "with this one: calibrate(model, persona)."
            )
    return sites


def _flags(p: Tensor, sites: Sequence[HookSite], calibration: MonitorCalibration) -> tuple[Tensor, dict[str, Any]]:
    """``flagged[turn, layer]`` (the calibration's reading over its threshold) and the baselines that say how."""
    ri = readings.READINGS.index(calibration.flag_reading)
    thr = torch.tensor([calibration.threshold(s.layer) for s in sites], dtype=torch.float64)
    flagged = p[:, ri] > thr[None]  # NaN (no reply yet) is never flagged
    summ = calibration.summary()
    baselines = {
        "threshold": {str(s.layer): float(t) for s, t in zip(sites, thr)},
        "flag_reading": calibration.flag_reading,
        "flag_layer": calibration.flag_layer if calibration.flag_layer in [s.layer for s in sites] else None,
        "calibration": {k: summ[k] for k in ("test_fpr", "test_tpr", "test_fpr_conversation", "test_tpr_conversation")},
    }
    return flagged, baselines


def monitor(
    model: ChatModel,
    conversation: Conversation | Sequence[Mapping[str, str]] | str | os.PathLike,
    persona: DirectionSet,
    refusal: DirectionSet,
    *,
    layers: Sequence[int] | None = None,
    calibration: MonitorCalibration | None = None,
    batch_size: int = 8,
) -> LabelledResult:
    """Per-turn persona and refusal projections (``turn x layer``), flagged when calibrated.

    ``conversation`` is a :class:`Conversation`, a list of ``{"role", "content"}`` dicts or a
    JSONL path. With ``calibration``, ``flagged[turn, layer]`` says whether the persona
    projection of the calibration's reading exceeds that layer's threshold.
    """
    conv = readings.as_conversation(conversation)
    sites = _monitor_sites(model, persona, refusal, layers, calibration)
    (ta,) = readings.turn_activations(model, [conv], sites, batch_size=batch_size)
    p, r = (readings.project_turns(ta.acts, readings.unit_vectors(d, sites)) for d in (persona, refusal))
    values: dict[str, Tensor] = {
        "persona_start": p[:, 0].float(),
        "persona_response": p[:, 1].float(),
        "refusal_start": r[:, 0].float(),
        "refusal_response": r[:, 1].float(),
    }
    baselines: dict[str, Any] = {}
    if calibration is not None:
        values["flagged"], baselines = _flags(p, sites, calibration)
    from ..models.loading import provenance

    config = {
        "conversation": conv.name,
        "turns": [
            {"turn": t.index, "message_index": t.message_index, "user": t.user, "response": t.response}
            for t in conv.turns
        ],
        "persona": f"{persona.name}@{persona.position}",
        "refusal": f"{refusal.name}@{refusal.position}",
        "site_kind": sites[0].kind,
        "n_forwards": ta.n_forwards,
        "n_tokens": ta.n_tokens,
        "n_tokens_per_prefix": ta.n_tokens_per_prefix,
    }
    return LabelledResult(
        KIND,
        ("turn", "layer"),
        {"turn": tuple(t.index for t in conv.turns), "layer": tuple(s.layer for s in sites)},
        values,
        baselines=baselines,
        metric={
            "name": "projection on the unit direction",
            "higher_means": "persona: more like the compliant persona; refusal: more like a refused request",
        },
        config=config,
        provenance=provenance(model, config={"monitor": conv.name}),
    )


def load_monitor_directions(
    path: str | os.PathLike, model: ChatModel | None = None
) -> tuple[DirectionSet, DirectionSet]:
    """The ``persona`` and ``refusal`` sets of a ``persona-gate directions --out DIR`` folder."""
    from pathlib import Path

    from ..errors import ArtefactError

    path = Path(path)
    missing = [name for name in ("persona", "refusal") if not (path / name).is_dir()]
    if missing:
        raise ArtefactError(
            f"{path} lacks {', '.join(f'{m}/' for m in missing)}; write it with `persona-gate directions --out {path}` "
            "(or pr.persona.save(DIR / 'persona') and pr.refusal.save(DIR / 'refusal'))."
        )
    return DirectionSet.load(path / "persona", model=model), DirectionSet.load(path / "refusal", model=model)
