"""Per-layer difference-in-means directions: a streaming fitter and a frozen DirectionSet.

For a contrast *positive* vs *negative* at site s the direction is

    r_s = mean(x_s | positive) - mean(x_s | negative),   v_s = r_s / ||r_s||

stored as unit vectors ``vectors[site, d_model]`` plus ``raw_norms[site] = ||r_s||``. The sign
convention is data: ``positive`` and ``negative`` name the groups, so ``x . v_s > 0`` means
"more like the positive group". persona_gate's standard contrasts are

* refusal = harmful - harmless requests, under the safe persona;
* persona = compliant - safe personas, over the same requests.

:class:`DirectionFitter` accumulates float64 sums per (position, group) from streamed batches:
residual streams carry a few very large coordinates, and float32 sums over thousands of prompts
lose the small differences that a direction is made of. Memory stays ``O(groups x sites x d)``.

Example::

    means = fit_group_means(model, prompts, sites_for(model), ["last", "mean:system"])
    refusal = means.direction("refusal", "safe/harmful", "safe/harmless", position="last")
    refusal.cosine(persona)          # per-layer cosine similarity
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import (
    ArtefactError,
    DModelMismatchError,
    EmptyGroupError,
    NonFiniteError,
    PersonaGateError,
    UnknownHookSiteError,
)
from ..models.protocol import ChatModel
from ..prompts.chat import RenderedPrompt
from ..prompts.positions import Position, parse_position
from ..prompts.sets import ChatPrompt
from ..sites import HookSite, parse_site
from .activations import ActivationStore, iter_activations

MIN_GROUP_SIZE = 2


def _names(groups: str | Sequence[str]) -> tuple[str, ...]:
    return (groups,) if isinstance(groups, str) else tuple(groups)


def _label(names: tuple[str, ...]) -> str:
    """'a' or '(a+b)': a union of groups reads unambiguously in 'positive - negative'."""
    return names[0] if len(names) == 1 else "(" + "+".join(names) + ")"


class DirectionFitter:
    """Mutable accumulator of float64 per-group sums at each (position, site)."""

    def __init__(self, sites: Sequence[HookSite], positions: Sequence[Position | str], d_model: int):
        self.sites = tuple(sites)
        # Repeated positions would add each batch twice into one sum (doubling every mean).
        self.positions = tuple(dict.fromkeys(str(parse_position(p)) for p in positions))
        self.d_model = int(d_model)
        self._sums: dict[tuple[str, str], Tensor] = {}
        self.counts: dict[str, int] = {}

    def update(self, groups: Sequence[str], acts: Float[Tensor, "pos batch site d_model"]) -> None:
        """Add one batch: ``acts[position, sample, site, d]`` with the samples' group names."""
        if acts.shape[0] != len(self.positions) or acts.shape[1] != len(groups):  # noqa: SIM102
            raise ValueError(
                f"acts of shape {tuple(acts.shape)} do not match {len(self.positions)} positions x "
                f"{len(groups)} samples."
            )
        if acts.shape[-1] != self.d_model:
            raise DModelMismatchError(f"acts have d_model {acts.shape[-1]}, the fitter {self.d_model}.")
        if not torch.isfinite(acts).all():
            raise NonFiniteError("non-finite activations passed to the fitter; check the model's dtype.")
        acts64 = acts.double()
        for g in sorted(set(groups)):
            mask = torch.tensor([x == g for x in groups])
            part = acts64[:, mask].sum(1)  # [pos, site, d]
            for p, pos in enumerate(self.positions):
                key = (pos, g)
                self._sums[key] = self._sums[key] + part[p] if key in self._sums else part[p].clone()
            self.counts[g] = self.counts.get(g, 0) + int(mask.sum())

    def means(self, provenance: dict | None = None) -> GroupMeans:
        if not self.counts:
            raise EmptyGroupError("the fitter has seen no activations; feed it at least one batch.")
        return GroupMeans(
            sites=self.sites,
            positions=self.positions,
            counts=dict(self.counts),
            means={k: v / self.counts[k[1]] for k, v in self._sums.items()},
            provenance=dict(provenance or {}),
        )


@dataclass(frozen=True)
class GroupMeans:
    """Frozen float64 group means: ``means[(position, group)][site, d_model]``."""

    sites: tuple[HookSite, ...]
    positions: tuple[str, ...]
    counts: dict[str, int]
    means: dict[tuple[str, str], Tensor]
    provenance: dict = field(default_factory=dict, compare=False)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(sorted(self.counts))

    def mean(self, groups: str | Sequence[str], position: Position | str) -> tuple[Tensor, int]:
        """Count-weighted mean over one or more groups at one position, and its count."""
        pos = str(parse_position(position))
        if pos not in self.positions:
            raise UnknownHookSiteError(f"position {pos} was not collected; collected: {', '.join(self.positions)}.")
        names = _names(groups)
        missing = [g for g in names if g not in self.counts]
        if missing:
            raise EmptyGroupError(f"no prompts in group(s) {missing}; groups are {list(self.groups)}.")
        n = sum(self.counts[g] for g in names)
        total = sum(self.means[(pos, g)] * self.counts[g] for g in names)
        return total / n, n

    def direction(
        self,
        name: str,
        positive: str | Sequence[str],
        negative: str | Sequence[str],
        position: Position | str = "last",
    ) -> DirectionSet:
        """The difference-in-means direction ``positive - negative`` at every site."""
        pos_names, neg_names = _names(positive), _names(negative)
        for label, names in (("positive", pos_names), ("negative", neg_names)):
            for g in names:
                if self.counts.get(g, 0) < MIN_GROUP_SIZE:
                    raise EmptyGroupError(
                        f"{label} group {g!r} has {self.counts.get(g, 0)} prompt(s); a mean difference "
                        f"needs at least {MIN_GROUP_SIZE} per group. Add prompts."
                    )
        mu_pos, n_pos = self.mean(pos_names, position)
        mu_neg, n_neg = self.mean(neg_names, position)
        return DirectionSet.from_means(
            name=name,
            sites=self.sites,
            pos_mean=mu_pos,
            neg_mean=mu_neg,
            positive=_label(pos_names),
            negative=_label(neg_names),
            counts={_label(pos_names): n_pos, _label(neg_names): n_neg},
            position=str(parse_position(position)),
            provenance=self.provenance,
        )


def fit_group_means(
    model: ChatModel,
    prompts: Sequence[ChatPrompt | RenderedPrompt | str],
    sites: Sequence[HookSite | str],
    positions: Sequence[Position | str] = ("last",),
    *,
    batch_size: int = 16,
    progress: bool = True,
    seed: int | None = None,
    config: dict | None = None,
) -> GroupMeans:
    """Stream ``prompts`` through the model and keep only float64 per-group means."""
    from ..models.loading import provenance
    from .activations import as_rendered, normalise_sites

    rendered = as_rendered(model, prompts)
    site_list = normalise_sites(model, sites)
    positions = list(dict.fromkeys(str(parse_position(p)) for p in positions))
    fitter = DirectionFitter(site_list, positions, model.cfg.d_model)
    for batch in iter_activations(
        model, rendered, site_list, positions, batch_size=batch_size, progress=progress, desc="fitting"
    ):
        fitter.update([rendered[i].group for i in batch.indices], batch.acts)
    return fitter.means(provenance(model, seed=seed, config=config))


@dataclass(frozen=True)
class DirectionSet:
    """Unit directions per site with raw norms, the sign convention, counts and provenance."""

    name: str
    sites: tuple[HookSite, ...]
    vectors: Float[Tensor, "site d_model"]
    raw_norms: Float[Tensor, " site"]
    positive: str
    negative: str
    counts: dict[str, int]
    position: str
    pos_mean: Float[Tensor, "site d_model"] | None = None
    neg_mean: Float[Tensor, "site d_model"] | None = None
    provenance: dict = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        # One line: the dataclass default would print every tensor (tens of KB).
        layers = [s.layer for s in self.sites]
        span = (
            f"{layers[0]}..{layers[-1]}"
            if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2
            else str(layers)
        )
        return (
            f"DirectionSet({self.name!r}: {self.positive} - {self.negative} at {self.position}, "
            f"{self.sites[0].kind if self.sites else '?'} layers {span}, d_model {self.vectors.shape[-1]})"
        )

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.sites):
            raise ValueError(f"vectors of shape {tuple(self.vectors.shape)} do not match {len(self.sites)} sites.")
        if not torch.isfinite(self.vectors).all() or not torch.isfinite(self.raw_norms).all():
            raise NonFiniteError(f"direction set {self.name!r} holds NaN/inf; refit it from finite activations.")

    @classmethod
    def from_means(
        cls,
        name: str,
        sites: Sequence[HookSite],
        pos_mean: Tensor,
        neg_mean: Tensor,
        positive: str,
        negative: str,
        counts: dict[str, int],
        position: str,
        provenance: dict | None = None,
    ) -> DirectionSet:
        diff = pos_mean.double() - neg_mean.double()
        if not torch.isfinite(diff).all():
            raise NonFiniteError(f"the {name!r} mean difference is not finite; check the activations.")
        norms = diff.norm(dim=-1)
        # A site where both groups agree exactly has no direction: e.g. resid_pre.0 at the last
        # token is the embedding of the same template token for every prompt. Its vector is 0
        # (raw norm 0), so steering or ablating there is a no-op rather than a division by zero.
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        return cls(
            name=name,
            sites=tuple(sites),
            vectors=(diff / safe[:, None]).float(),
            raw_norms=norms.float(),
            positive=positive,
            negative=negative,
            counts=dict(counts),
            position=position,
            pos_mean=pos_mean.float(),
            neg_mean=neg_mean.float(),
            provenance=dict(provenance or {}),
        )

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[-1])

    @property
    def layers(self) -> list[int]:
        return [s.layer for s in self.sites]

    def site_index(self, site: HookSite | str | int) -> int:
        if isinstance(site, int):
            matches = [i for i, s in enumerate(self.sites) if s.layer == site]
            if len(matches) != 1:
                raise UnknownHookSiteError(
                    f"layer {site} is not in the direction set {self.name!r} (layers {list(self.layers)}); use one of those, "
                    "or fit the directions at that layer."
                    if not matches
                    else f"layer {site} matches {len(matches)} sites in {self.name!r}; pass a HookSite."
                )
            return matches[0]
        s = parse_site(site) if isinstance(site, str) else site
        if s not in self.sites:
            raise UnknownHookSiteError(
                f"{s} is not in direction set {self.name!r}; it holds {', '.join(map(str, self.sites))}: use one of those, or fit directions there."
            )
        return self.sites.index(s)

    def fingerprint_parts(self) -> list:
        """What a stored grid cell computed with this set depends on: its name, sites and vectors."""
        return ["direction_set", self.name, [str(s) for s in self.sites], self.vectors, self.raw_norms]

    def at(self, site: HookSite | str | int) -> Float[Tensor, " d_model"]:
        """Unit vector at ``site`` (a HookSite, 'resid_pre.3', or a layer index)."""
        return self.vectors[self.site_index(site)]

    def raw(self, site: HookSite | str | int) -> Float[Tensor, " d_model"]:
        """The un-normalised mean difference at ``site``."""
        i = self.site_index(site)
        return self.vectors[i] * self.raw_norms[i]

    def _check_other(self, other: DirectionSet) -> None:
        if other.d_model != self.d_model:
            raise DModelMismatchError(
                f"{self.name!r} has d_model {self.d_model} but {other.name!r} has {other.d_model}; "
                "compare directions from the same model."
            )

    def cosine(self, other: DirectionSet) -> Float[Tensor, " site"]:
        """Per-site cosine similarity with another set over the same sites."""
        self._check_other(other)
        if other.sites != self.sites:
            raise UnknownHookSiteError(
                f"{self.name!r} and {other.name!r} hold different sites; use cosine_matrix for a cross-site comparison."
            )
        return (self.vectors.double() * other.vectors.double()).sum(-1).float()

    def cosine_matrix(self, other: DirectionSet | None = None) -> Float[Tensor, "site other_site"]:
        """``M[i, j] = cos(self at site i, other at site j)``; ``other`` defaults to self."""
        other = self if other is None else other
        self._check_other(other)
        return (self.vectors.double() @ other.vectors.double().T).float()

    def project(self, acts: Float[Tensor, "*batch site d_model"] | ActivationStore) -> Float[Tensor, "*batch site"]:
        """Scalar projection ``x . v_s`` of activations onto the unit direction at each site."""
        if isinstance(acts, ActivationStore):
            if acts.sites != self.sites:
                idx = [acts.site_index(s) for s in self.sites]
                acts = acts.acts[:, idx]
            else:
                acts = acts.acts
        if acts.shape[-1] != self.d_model:
            raise DModelMismatchError(
                f"activations have d_model {acts.shape[-1]}, directions {self.d_model}; "
                "project activations of the model the directions were fitted on."
            )
        if acts.shape[-2] != len(self.sites):
            raise ValueError(f"activations hold {acts.shape[-2]} sites, the set {len(self.sites)}.")
        return (acts.double() * self.vectors.double()).sum(-1).float()

    def random_like(self, seed: int = 0) -> DirectionSet:
        """A matched-norm random control: Gaussian unit directions (seeded), same raw norms."""
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(self.vectors.shape, generator=g, dtype=torch.float64)
        v = v / v.norm(dim=-1, keepdim=True)
        return DirectionSet(
            name=f"random[{self.name},seed={seed}]",
            sites=self.sites,
            vectors=v.float(),
            raw_norms=self.raw_norms.clone(),
            positive="random",
            negative="random",
            counts={},
            position=self.position,
            provenance={**self.provenance, "random_control": {"of": self.name, "seed": seed}},
        )

    def check_model(self, model: ChatModel) -> None:
        d = int(model.cfg.d_model)
        if d != self.d_model:
            raise DModelMismatchError(
                f"direction set {self.name!r} has d_model {self.d_model} but the model has {d}; "
                "fit directions on this model (or load the model they came from)."
            )
        n = int(model.cfg.n_layers)
        bad = [str(s) for s in self.sites if s.layer >= n]
        if bad:
            raise DModelMismatchError(f"sites {bad} do not exist in a model with {n} layers.")

    def summary(self) -> list[dict[str, Any]]:
        return [{"site": str(s), "layer": s.layer, "raw_norm": float(n)} for s, n in zip(self.sites, self.raw_norms)]

    def save(self, path: str | Path) -> Path:
        from ..io import save_artefact

        tensors = {"vectors": self.vectors, "raw_norms": self.raw_norms}
        if self.pos_mean is not None and self.neg_mean is not None:
            tensors |= {"pos_mean": self.pos_mean, "neg_mean": self.neg_mean}
        manifest = {
            "name": self.name,
            "sites": [str(s) for s in self.sites],
            "d_model": self.d_model,
            "positive": self.positive,
            "negative": self.negative,
            "counts": self.counts,
            "position": self.position,
            "provenance": self.provenance,
        }
        return save_artefact(path, "direction_set", tensors, manifest)

    def export(self, path: str | Path, format: str = "safetensors") -> Path:
        """Write the set for other tools: one safetensors file with one float32 tensor per layer
        (``layer.<l>``: the unit direction in the stream entering block ``l``) and a JSON sidecar
        beside it (``<path>.json``: model, layer and sign conventions, raw norms, provenance) --
        reading it needs nothing but safetensors. Both files are written atomically; returns the
        safetensors path. Load into steering-vectors / repeng as the README shows (their layer
        ``l - 1``: they add to a decoder layer's output)."""
        import json

        from safetensors.torch import save

        from ..io import atomic_write_bytes, atomic_write_text

        if format != "safetensors":
            raise ValueError(f"unknown export format {format!r}; use format='safetensors'.")
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; give a file name such as persona.safetensors.")
        tensors = {
            f"layer.{s.layer}": v.detach().float().contiguous().clone() for s, v in zip(self.sites, self.vectors)
        }
        norms = {str(s.layer): round(float(r), 6) for s, r in zip(self.sites, self.raw_norms)}
        sidecar = {
            "kind": "persona_gate.direction_export",
            "schema": 1,
            "name": self.name,
            "model": (self.provenance or {}).get("model"),
            "d_model": self.d_model,
            "site": self.sites[0].kind if self.sites else None,
            "layer_convention": (
                "layer.<l> lives in the residual stream entering block l: TransformerLens "
                "blocks.<l>.hook_resid_pre, Hugging Face hidden_states[l]; tools that add to the "
                "output of decoder layer k (steering-vectors, repeng) call it layer k = l - 1"
            ),
            "sign_convention": f"positive - negative: mean({self.positive}) - mean({self.negative}), at {self.position}",
            "vectors": "unit length; multiply by raw_norms[l] for one mean difference",
            "raw_norms": norms,
            "counts": self.counts,
            "provenance": self.provenance,
        }
        atomic_write_bytes(
            path, save(tensors, metadata={"persona_gate": json.dumps({"name": self.name, "raw_norms": norms})})
        )
        atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, model: ChatModel | None = None, d_model: int | None = None) -> DirectionSet:
        """Load a saved set; with ``model`` or ``d_model`` given, refuse a width mismatch."""
        from ..io import load_artefact

        m, t = load_artefact(path, "direction_set")
        try:
            saved_width = int(m["d_model"])
            fields = dict(
                name=m["name"],
                sites=tuple(parse_site(s) for s in m["sites"]),
                vectors=t["vectors"],
                raw_norms=t["raw_norms"],
                positive=m["positive"],
                negative=m["negative"],
                counts={k: int(v) for k, v in m["counts"].items()},
                position=m["position"],
                pos_mean=t.get("pos_mean"),
                neg_mean=t.get("neg_mean"),
                provenance=m["provenance"],
            )
        except ArtefactError:
            raise
        except (PersonaGateError, KeyError, TypeError, ValueError, AttributeError) as e:  # a damaged field
            raise ArtefactError(f"{path} lacks or mangles {e} in its manifest; save the directions again.") from None
        strings = ("name", "positive", "negative", "position")
        if not all(isinstance(fields[k], str) for k in strings) or not isinstance(fields["provenance"], dict):
            raise ArtefactError(f"{path} has a mangled manifest (names or provenance); save the directions again.")
        want = int(model.cfg.d_model) if model is not None else d_model
        if want is not None and saved_width != want:
            raise DModelMismatchError(
                f"{path} holds directions of d_model {m['d_model']} but the model has {want}; "
                "these directions come from another model. Fit them on this one."
            )
        try:
            ds = cls(**fields)
        except ArtefactError:
            raise
        except (PersonaGateError, TypeError, ValueError) as e:
            raise ArtefactError(
                f"{path} does not form a valid direction set ({e}); save the directions again."
            ) from None
        if model is not None:
            ds.check_model(model)
        return ds
