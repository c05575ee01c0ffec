"""Bake an intervention into a model's weights: a plain Hugging Face folder, no persona_gate needed.

* **Ablation** over layers ``0..b`` with one direction ``v`` (``source_layer``) becomes Arditi et
  al.'s weight orthogonalisation: modules that write into the residual stream get
  ``W <- (I - v v^T) W`` (and their bias projected). Two forms, recorded in the export's
  ``intervention.through_last_block``:

  - *through the last block* (the default when the ablation reaches the model's last layer, so
    "every layer" means what the field means): the token (and position) embeddings and the
    attention-output and MLP-output projections of blocks ``0..b`` -- with ``b = L-1`` every write
    of the model. Exactly equal (:func:`hooked_equivalent`): directional ablation at every point
    of the stream through block ``b``'s output, i.e. ``resid_pre`` of blocks ``0..b``,
    ``resid_mid`` of blocks ``0..b`` (where attention and MLP run one after the other) and
    ``resid_post`` of block ``b``.
  - *the window form* (the default for a window ``0..b`` short of the last layer, or
    ``through_last_block=False``): the embeddings and blocks ``0..b-1``; equal to ablation at
    ``resid_pre`` of blocks ``0..b`` and ``resid_mid`` of blocks ``0..b-1``. Block ``b`` reads a
    stream without ``v`` but its own writes are left alone, as those hooks leave them.

  By induction no point of the stream in the ablated span has a component along ``v``.
  (persona_gate's ``Ablate`` at ``resid_pre`` alone differs from this by what one block's
  attention adds along ``v`` before its MLP reads the stream.) A window that starts after layer 0
  has no exact equivalent (the stream entering it carries ``v`` from writers that earlier blocks
  also read), nor does a different direction per layer: both are named errors.
* **Steering** -- ``Steer(d, alpha, layers=[l], scope="both")`` adds the constant ``alpha * r * v``
  to the stream entering block ``l``: at layer 0 to every token embedding; after it to the bias of
  block ``l-1``'s MLP output projection (the last writer before block ``l``), giving the MLP
  projections a zero bias where the config can declare one (Llama's ``mlp_bias``). Exact.

Tied embeddings are untied before an embedding is edited, so the unembedding is unchanged.
Architectures whose blocks normalise their outputs before the residual add (Gemma 2/3, OLMo-2)
cannot carry either edit exactly: :class:`~persona_gate.errors.UnsupportedModelError`. Every
check runs before the output folder is touched; the export works on a CPU copy of the weights.

Example::

    export_model(model, Ablate(pr.refusal, layers=range(model.cfg.n_layers), source_layer=3), "runs/no-refusal")
    AutoModelForCausalLM.from_pretrained("runs/no-refusal")      # anywhere, persona_gate not installed
    export_model(model, Ablate(pr.refusal, layers=range(4), source_layer=3), "runs/window")   # blocks 0..2 edited
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..core.interventions import Ablate, AddBack, Steer
from ..errors import InterventionError, UnsupportedModelError
from ..io import FOLDER_MARK, atomic_replace_dir, claim_folder
from ..models.adapter import (
    add_to_residual,
    mlp_bias_problem,
    plain_copy,
    project_out_of_writes,
    residual_writers,
    untie_embeddings,
    weights_folder,
)
from ..models.loading import ModelInfo, check_model, model_info
from ..models.profile import PROFILE_FILE
from ..provenance import versions
from ..sites import HookSite, check_layer

EXPORT_FILE = "persona_gate_export.json"


def check_same_model(model: Any, direction: Any, allow_other_model: bool = False) -> None:
    """Refuse directions fitted on another model (width, depth, or -- where both are known -- name)."""
    from ..errors import DModelMismatchError

    direction.check_model(model)
    fitted = (direction.provenance or {}).get("model") or {}
    here = model_info(model).name if model_info(model) is not None else None
    if not allow_other_model and fitted.get("name") and here and fitted["name"] != here:
        raise DModelMismatchError(
            f"direction set {direction.name!r} was fitted on {fitted['name']!r}, but the model to export is {here!r}; "
            "fit the directions on this model, or pass allow_other_model=True (--allow-other-model) if it is the same "
            "weights under another name."
        )


@dataclasses.dataclass(frozen=True)
class AblationPlan:
    """What an exported ablation edits: the unit direction, the window ``0..last`` and its form."""

    v: torch.Tensor  # the unit direction (float64)
    last: int  # the ablation's window is layers 0..last
    through_last_block: bool  # block `last`'s own writes are edited too (ablated through resid_post.last)
    source_layer: int  # whose direction is projected out

    @property
    def edited_blocks(self) -> int:
        """How many blocks (0..k-1) have their writes edited, besides the embeddings."""
        return self.last + 1 if self.through_last_block else self.last


def _ablation_form(plan: AblationPlan, n_layers: int) -> str:
    """The form of an exported ablation in words (``persona_gate_export.json``'s ``intervention.form``)."""
    b, k = plan.last, plan.edited_blocks
    blocks = f"blocks 0..{k - 1}" if k else "no block"
    if plan.through_last_block:
        whole = " -- every write of the model (Arditi et al.)" if b == n_layers - 1 else ""
        return f"through the last block: the embeddings and {blocks} edited{whole}; no point of the stream through resid_post.{b} carries the direction"
    return f"window: the embeddings and {blocks} edited; block {b} reads a stream without the direction, its own writes are left alone (resid_post.{b} may carry it)"


def _ablation_plan(model: Any, spec: Ablate, through_last_block: bool | None = None) -> AblationPlan:
    n = int(model.cfg.n_layers)
    layers = sorted(set(spec.direction.layers if spec.layers is None else (int(x) for x in spec.layers)))
    if not layers or layers[0] != 0 or layers != list(range(layers[-1] + 1)):
        raise InterventionError(
            f"only an ablation over layers 0..b has an exact weight equivalent, got layers {layers}: the stream entering a "
            "later window carries the direction from writers that earlier blocks also read. Ablate from layer 0 "
            "(e.g. every layer), or apply the window with hooks (pg.apply)."
        )
    if layers[-1] >= n:
        raise InterventionError(f"layer {layers[-1]} does not exist in a model with {n} layers.")
    source = spec.source_layer
    if source is None:
        vecs = torch.stack([spec.direction.at(layer) for layer in layers])
        if not torch.allclose(vecs, vecs[:1].expand_as(vecs)):
            raise InterventionError(
                "ablating a different direction at each layer has no exact weight equivalent; pass "
                "source_layer= (--source-layer) to project one layer's direction out everywhere."
            )
        source = layers[0]
    v = spec.direction.at(source).double()
    if float(v.norm()) == 0:
        raise InterventionError(
            f"direction set {spec.direction.name!r} is zero at layer {source}; pick another source_layer."
        )
    through = layers[-1] == n - 1 if through_last_block is None else bool(through_last_block)
    return AblationPlan(v / v.norm(), layers[-1], through, int(source))


def _ablation_record(model: Any, spec: Ablate, plan: AblationPlan) -> dict[str, Any]:
    """The ``intervention`` entry of an exported ablation: its window, its form, what was edited."""
    k = plan.edited_blocks
    return {
        "kind": "ablate",
        "direction": spec.direction.name,
        "layers": [0, plan.last],
        "source_layer": plan.source_layer,
        "through_last_block": plan.through_last_block,
        "edited_blocks": [0, k - 1] if k else [],
        "ablated_through": f"resid_post.{plan.last}" if plan.through_last_block else f"resid_pre.{plan.last}",
        "form": _ablation_form(plan, int(model.cfg.n_layers)),
    }


def _steer_plan(model: Any, spec: Steer) -> tuple[list[tuple[int, torch.Tensor]], dict[str, Any]]:
    n = int(model.cfg.n_layers)
    if spec.scope != "both":
        raise InterventionError(
            f"weights act at every position, but this Steer has scope={spec.scope!r}; export "
            "Steer(..., scope='both'), the intervention the exported weights equal."
        )
    layers = list(dict.fromkeys(spec.direction.layers if spec.layers is None else (int(x) for x in spec.layers)))
    shifts = []
    for layer in layers:
        check_layer(layer, n)
        i = spec.direction.site_index(layer if spec.source_layer is None else spec.source_layer)
        v, r = spec.direction.vectors[i].double(), float(spec.direction.raw_norms[i])
        if r == 0 or float(v.norm()) == 0:
            raise InterventionError(f"direction set {spec.direction.name!r} is zero at layer {layer}; steer elsewhere.")
        shifts.append((layer, v * spec.alpha * (r if spec.units == "raw" else 1.0)))
    record = {
        "kind": "add_back" if isinstance(spec, AddBack) else "steer",
        "direction": spec.direction.name,
        "layers": layers,
        "alpha": float(spec.alpha),
        "units": spec.units,
        "source_layer": spec.source_layer,
        "scope": "both",
    }
    return shifts, record


def hooked_equivalent(
    model: Any, intervention: Steer | Ablate, *, through_last_block: bool | None = None
) -> list[Steer | Ablate]:
    """The hook interventions whose logits the exported weights reproduce exactly.

    For steering (``scope="both"``) it is the intervention itself. For an ablation over layers
    ``0..b`` it is directional ablation at every point of the residual stream in the ablated span:
    ``resid_pre`` of blocks ``0..b``; in blocks that apply attention and MLP one after the other
    also ``resid_mid`` of every edited block (the orthogonalised attention output no longer carries
    the direction into the MLP's input); and, through the last block (``through_last_block``, the
    default when ``b`` is the model's last layer), ``resid_post`` of block ``b``. ``through_last_block``
    is as for :func:`export_model`. (persona_gate's :class:`Ablate` at ``resid_pre`` alone leaves
    the ``resid_mid`` component in; the difference is what the attention adds along ``v`` inside
    one block.)
    """
    if not isinstance(intervention, Ablate):
        return [intervention]
    plan = _ablation_plan(model, intervention, through_last_block)
    d, source = intervention.direction, plan.source_layer

    def at(kind: str) -> Any:
        return dataclasses.replace(d, sites=tuple(HookSite(s.layer, kind) for s in d.sites))

    out: list[Steer | Ablate] = [Ablate(d, layers=range(plan.last + 1), source_layer=source)]
    if not bool(getattr(model.cfg, "parallel_attn_mlp", False)) and plan.edited_blocks:
        out.append(Ablate(at("resid_mid"), layers=range(plan.edited_blocks), source_layer=source))
    if plan.through_last_block:
        out.append(Ablate(at("resid_post"), layers=[plan.last], source_layer=source))
    return out


def _check_exportable(model: Any, intervention: Any, allow_other_model: bool) -> ModelInfo | None:
    """Refuse what the weights could not carry (another intervention or site, processed weights, a
    direction of another model); the model's :func:`model_info` (None where unknown)."""
    check_model(model)
    if not isinstance(intervention, (Steer, Ablate)):
        raise InterventionError(f"export_model takes a Steer, AddBack or Ablate, got a {type(intervention).__name__}.")
    kind = intervention.direction.sites[0].kind if intervention.direction.sites else None
    if kind != "resid_pre":
        raise InterventionError(
            f"export edits the residual stream entering each block; {intervention.direction.name!r} "
            f"lives at {kind}. Fit the directions at resid_pre."
        )
    info = model_info(model)
    if info is not None and info.processing:
        raise UnsupportedModelError(
            "this model was loaded with processing=True (folded, centred weights), which the "
            "saved folder would not reproduce; load it with processing=False to export."
        )
    check_same_model(model, intervention.direction, allow_other_model)
    return info


def _ablate_weights(hf: Any, writers: Any, v: torch.Tensor, blocks: int) -> list[str]:
    """Project ``v`` out of the embeddings and the writes of blocks ``0..blocks-1``; the edited modules' names."""
    edited = [*writers.embeddings, *(w for block in writers.blocks[:blocks] for w in block)]
    if writers.tied:
        untie_embeddings(hf)
    project_out_of_writes(hf, edited, v)
    return edited


def _steer_weights(hf: Any, writers: Any, shifts: list[tuple[int, torch.Tensor]]) -> list[str]:
    """Add each layer's shift to the stream entering it; the edited modules' names."""
    edited = []
    for layer, shift in shifts:
        if layer == 0 and writers.tied:
            untie_embeddings(hf)
        edited.append(add_to_residual(hf, writers, int(layer), shift))
    return edited


def _export_manifest(
    equals: list[Steer | Ablate], intervention: Steer | Ablate, record: dict, edited: list[str], info: ModelInfo | None
) -> dict[str, Any]:
    """``persona_gate_export.json``: what was edited, the hooks it equals, the source model, versions."""
    return {
        "kind": "persona_gate.exported_model",
        "schema": 1,
        "intervention": record,
        "edited_modules": edited,
        "equals": [
            {
                "spec": type(h).__name__,
                "site": h.direction.sites[0].kind,
                "layers": list(h.layers or h.direction.layers),
                "source_layer": h.source_layer,
            }
            for h in equals
        ],
        "exact": "logits equal the hooked model's under `equals` (scope 'both'), up to float rounding",
        "source_model": info.to_dict() if info is not None else None,
        "direction_provenance": intervention.direction.provenance,
        "versions": versions(),
    }


def _save_export(out: Path, hf: Any, model: Any, manifest: dict[str, Any]) -> None:
    """The edited weights, the tokenizer, the profile (if any), the manifest and the folder mark,
    renamed into ``out`` complete."""
    folder = weights_folder(model)

    def fill(tmp: Path) -> None:
        hf.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        if folder is not None and (folder / PROFILE_FILE).is_file():
            shutil.copy(folder / PROFILE_FILE, tmp / PROFILE_FILE)
        (tmp / EXPORT_FILE).write_text(json.dumps(manifest, indent=1, default=str), encoding="utf-8")
        (tmp / FOLDER_MARK).write_text(
            json.dumps({"kind": "export", "written_by": "persona_gate.export_model"}), encoding="utf-8"
        )

    atomic_replace_dir(out, fill)


def export_model(
    model: Any,
    intervention: Steer | Ablate | AddBack,
    out: str | Path,
    *,
    allow_other_model: bool = False,
    through_last_block: bool | None = None,
) -> Path:
    """Write ``model`` with ``intervention`` baked into its weights to the folder ``out``.

    The folder holds ``config.json``, safetensors weights, the tokenizer with its chat template,
    the model profile (when the model has one) and ``persona_gate_export.json`` (what was edited,
    the form of an ablation, the hooks it equals, the direction's provenance, versions). It loads
    with ``transformers.AutoModelForCausalLM`` alone; its logits equal the hooked model's under
    :func:`hooked_equivalent` of the intervention. Everything is checked before the first write,
    and the folder appears complete or not at all.

    ``through_last_block`` (ablations only): also edit the writes of the window's last block ``b``,
    so the direction is gone from the stream through ``resid_post.b`` -- with every layer, Arditi
    et al.'s orthogonalisation of every write. Default: True when the ablation reaches the model's
    last layer, False for a shorter window (the window form: block ``b``'s writes left alone).
    """
    info = _check_exportable(model, intervention, allow_other_model)
    if through_last_block is not None and not isinstance(intervention, Ablate):
        raise InterventionError(
            "through_last_block (--through-last-block) chooses the form of an ablation; a steering export takes none."
        )
    writers = residual_writers(model)
    if isinstance(intervention, Ablate):
        plan = _ablation_plan(model, intervention, through_last_block)
        record, shifts = _ablation_record(model, intervention, plan), []
    else:
        shifts, record = _steer_plan(model, intervention)
    hf = plain_copy(model)  # the model that is edited and saved (the loaded one stays as it was)
    for layer, _ in shifts:  # checked on that model, by the names it has
        problem = mlp_bias_problem(hf, writers, layer)
        if problem:
            raise UnsupportedModelError(problem)
    out = claim_folder(out, "export", written_by="persona_gate.export_model")  # every check passed: now write
    if isinstance(intervention, Ablate):
        edited = _ablate_weights(hf, writers, plan.v, plan.edited_blocks)
    else:
        edited = _steer_weights(hf, writers, shifts)
    equals = hooked_equivalent(model, intervention, through_last_block=through_last_block)
    _save_export(out, hf, model, _export_manifest(equals, intervention, record, edited, info))
    return out
