"""Labelled results: every experiment returns named dims, coordinate labels and metric tensors.

A steering sweep, a per-layer re-introduction, a window-projection grid and activation patching
all produce "a number per cell of a grid": ``values[name][i_0, ..., i_k]`` is metric ``name`` at
``(coords[dims[0]][i_0], ..., coords[dims[k]][i_k])``. Keeping the labels next to the tensors lets
callers select by *label* (``layer=12``, ``alpha=-4.0``), never by a bare index. NaN marks a
cell not computed yet: a resumable sweep saves a partly filled result and fills it through
:meth:`LabelledResult.with_values`; :meth:`LabelledResult.mean` skips NaN.
The metric's meaning and sign convention are data, as are the reference points (``baselines``);
both are saved with the tensors. ``metric`` maps names to prose (strings only, checked on
construction) in one of two forms:

* the headline form ``{"name": what is measured, "higher_means": what a larger value says}``
  (``higher_means`` optional), for a result whose values share one meaning (sweeps, patching,
  monitoring);
* the per-value form ``{value or term: its meaning}``, for a result whose values mean different
  things (guard grid, screening, red team: ``{"kl": "mean per-token KL ...", "cap": "x <- ..."}``),
  optionally with a ``"name"`` for the whole.

Example::

    r = LabelledResult("steering_sweep", ("layer", "alpha"), {"layer": (3, 5), "alpha": (0.0, 4.0)}, {"score": s})
    r.sel(alpha=4.0).mean("layer")["score"]      # 0-d tensor: mean score at alpha 4 over layers
    r.to_dataframe()                             # tidy: columns layer, alpha, score; one row per cell
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Shaped
from torch import Tensor

from .errors import ArtefactError, ResultError, SelectionError
from .io import load_artefact, save_artefact

KIND = "labelled_result"
Label = bool | int | float | str
_VALUE_DTYPES = {torch.float32, torch.float64, torch.bool, torch.uint8, torch.int8, torch.int16, torch.int, torch.long}


def _label(x: Any, dim: str) -> Label:
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:  # 0-d tensor / numpy scalar
        x = x.item()
    if isinstance(x, (bool, str)):
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        if math.isnan(x):
            raise ResultError(f"coords[{dim!r}] holds NaN, which sel() can never match; use a label such as 'none'.")
        return float(x)
    raise ResultError(f"coords[{dim!r}] holds {x!r} ({type(x).__name__}); labels must be int, float, str or bool.")


def _coord(raw: Any, dim: str) -> tuple[Label, ...]:
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
        raise ResultError(f"coords[{dim!r}] must be a sequence with one label per index, not {raw!r}.")
    labels = tuple(_label(x, dim) for x in (raw.tolist() if hasattr(raw, "tolist") else raw))
    # 1, 1.0 and True hash alike, so sel() could not tell them apart: they count as duplicates too.
    dup = [x for x, n in collections.Counter(labels).items() if n > 1]
    if dup:
        raise ResultError(f"coords[{dim!r}] repeats the labels {dup}; each label must name exactly one index.")
    return labels


def _tag(labels: tuple[Label, ...]) -> str:
    names = {type(x).__name__ for x in labels}
    return names.pop() if len(names) == 1 else "mixed"


def _json(x: Any, where: str) -> Any:
    """A canonical JSON copy (tuples become lists) so a saved and reloaded result compares equal."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, float)):  # subclasses too (numpy.float64, IntEnum): stored as the plain type
        return int(x) if isinstance(x, int) else float(x)
    if isinstance(x, (list, tuple)):
        return [_json(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, Mapping):
        bad = [k for k in x if not isinstance(k, str)]
        if bad:
            raise ResultError(f"{where} has non-string keys {bad!r}; JSON keys must be strings, e.g. str(layer).")
        return {k: _json(v, f"{where}[{k!r}]") for k, v in x.items()}
    raise ResultError(
        f"{where} holds a {type(x).__name__} ({x!r:.60}), which is not JSON-able; "
        "store plain numbers, strings, lists or dicts (e.g. float(t), t.tolist())."
    )


def _nanmean(t: Shaped[Tensor, ...], axis: int) -> Float[Tensor, ...]:
    # bool/int become float64: a refusal rate over many examples should not carry float32 rounding.
    return torch.nanmean(t if t.is_floating_point() else t.double(), dim=axis)


def _same(a: Tensor, b: Tensor) -> bool:
    a, b = a.detach().cpu(), b.detach().cpu()
    na, nb = a.isnan(), b.isnan()  # NaN = "not computed": equal when missing in the same cells
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(na, nb) and torch.equal(a[~na], b[~nb])


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if x != x else x  # only NaN differs from itself


def _check_metric(metric: Mapping[str, Any]) -> None:
    """Either documented form of ``metric`` (module docstring): non-empty names, each mapped to prose."""
    bad = {k: v for k, v in metric.items() if not (isinstance(k, str) and k and isinstance(v, str))}
    if bad:
        raise ResultError(
            f"metric maps names to prose (strings), e.g. {{'name': 'refusal', 'higher_means': 'more refusal'}} "
            f"or {{'kl': 'mean per-token KL, nats'}}; these entries are not: {bad}."
        )


@dataclass(frozen=True, eq=False)
class LabelledResult:
    """Metric tensors over named, labelled dims. Stored canonically, whatever was passed in: ``dims``
    a tuple, ``coords`` a dict of label tuples (lists, 1-D tensors accepted), the dicts as JSON."""

    kind: str
    dims: Sequence[str]
    coords: Mapping[str, Any]
    values: Mapping[str, Tensor]
    baselines: Mapping[str, Any] = field(default_factory=dict)
    metric: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen: normalise once here (tuples, plain Python labels, own dict copies) so that every
        # derived result and every reloaded one has the same canonical form.
        if not isinstance(self.kind, str) or not self.kind:
            raise ResultError(f"kind must be a non-empty string such as 'steering_sweep', not {self.kind!r}.")
        if isinstance(self.dims, str) or not all(isinstance(d, str) and d for d in self.dims):
            raise ResultError(f"dims must be a tuple of non-empty names, e.g. ('layer', 'alpha'), not {self.dims!r}.")
        dims = tuple(self.dims)
        dup = sorted(d for d, n in collections.Counter(dims).items() if n > 1)
        if dup:
            raise ResultError(f"dims {dims} repeat {dup}; give every dim a distinct name.")
        extra, missing = [d for d in self.coords if d not in dims], [d for d in dims if d not in self.coords]
        if extra:
            raise ResultError(f"coords name unknown dims {extra}; dims are {dims}: add them to dims or drop them.")
        if missing:
            raise ResultError(f"dims {missing} have no coords; give coords[dim] one label per index.")
        coords = {d: _coord(self.coords[d], d) for d in dims}
        shape = tuple(len(coords[d]) for d in dims)
        values = dict(self.values)
        for name, v in values.items():
            if not isinstance(name, str) or not name or name in dims:
                raise ResultError(f"value name {name!r} must be a non-empty string and not a dim name {dims}.")
            if not isinstance(v, Tensor):
                raise ResultError(f"values[{name!r}] is a {type(v).__name__}; pass a tensor (torch.as_tensor(x)).")
            if v.dtype not in _VALUE_DTYPES:
                raise ResultError(f"values[{name!r}] is {v.dtype}; use float32/float64, bool or int (e.g. .float()).")
            if tuple(v.shape) != shape:
                raise ResultError(
                    f"values[{name!r}] has shape {tuple(v.shape)} but the coords give "
                    f"{dict(zip(dims, shape))}; give one entry per label along each dim, in order."
                )
        for f in ("baselines", "metric", "config", "provenance"):
            if not isinstance(getattr(self, f), Mapping):
                raise ResultError(f"{f} must be a dict, not {type(getattr(self, f)).__name__}.")
            object.__setattr__(self, f, _json(getattr(self, f), f))
        _check_metric(self.metric)
        for f, v in (("dims", dims), ("coords", coords), ("values", values)):
            object.__setattr__(self, f, v)

    @property
    def sizes(self) -> dict[str, int]:
        return {d: len(self.coords[d]) for d in self.dims}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.values:
            raise SelectionError(f"no value {name!r}; this result holds {list(self.values)}.")
        return self.values[name]

    def __eq__(self, other: object) -> bool:
        """Exact: labels with their types, dtypes, NaN in the same cells. Provenance is not compared."""
        if not isinstance(other, LabelledResult):
            return NotImplemented
        # Through JSON, which tells 1 from 1.0 from true (== does not) and lets a NaN baseline equal NaN.
        meta = lambda r: json.dumps(  # noqa: E731
            [r.kind, r.dims, r.coords, sorted(r.values), r.baselines, r.metric, r.config], sort_keys=True
        )
        return meta(self) == meta(other) and all(_same(v, other.values[k]) for k, v in self.values.items())

    def __repr__(self) -> str:
        vals = ", ".join(f"{k}: {str(v.dtype).removeprefix('torch.')}" for k, v in self.values.items())
        return f"LabelledResult({self.kind!r}, sizes={self.sizes}, values={{{vals}}})"

    def _axis(self, dim: str) -> int:
        if dim not in self.dims:
            raise SelectionError(f"no dim {dim!r}; this result has dims {self.dims}.")
        return self.dims.index(dim)

    def _index(self, dim: str, i: Any) -> int:
        n = len(self.coords[dim])
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"isel({dim}=...) takes integer indices, not {i!r}; select labels with sel().")
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for dim {dim!r} of size {n}.")
        return int(i) % n

    def isel(self, **indices: Any) -> LabelledResult:
        """Select by position: an int drops the dim; a list/tuple/slice of ints keeps it, in that order."""
        picks: dict[str, int | list[int]] = {}
        for dim, ix in indices.items():
            self._axis(dim)
            ix = list(range(len(self.coords[dim])))[ix] if isinstance(ix, slice) else ix
            picks[dim] = [self._index(dim, i) for i in ix] if isinstance(ix, (list, tuple)) else self._index(dim, ix)
        values = {}
        for name, v in self.values.items():
            for ax in reversed(range(len(self.dims))):  # right to left, so the axes still to do keep their number
                p = picks.get(self.dims[ax])
                if isinstance(p, int):
                    v = v.select(ax, p)
                elif p is not None:
                    v = v.index_select(ax, torch.tensor(p, dtype=torch.long, device=v.device))
            values[name] = v
        dims = tuple(d for d in self.dims if not isinstance(picks.get(d), int))
        coords = {d: tuple(self.coords[d][i] for i in picks[d]) if d in picks else self.coords[d] for d in dims}
        return replace(self, dims=dims, coords=coords, values=values)

    def sel(self, **labels: Any) -> LabelledResult:
        """Select by label: a scalar label drops the dim; a list/tuple of labels keeps it, in that order."""
        picks: dict[str, int | list[int]] = {}
        for dim, lab in labels.items():
            self._axis(dim)
            where = {x: i for i, x in enumerate(self.coords[dim])}
            keep = isinstance(lab, (list, tuple))
            unknown = [x for x in (lab if keep else [lab]) if x not in where]
            if unknown:
                raise SelectionError(
                    f"{unknown} are not labels of dim {dim!r}; available labels: {list(self.coords[dim])}"
                )
            picks[dim] = [where[x] for x in lab] if keep else where[lab]
        return self.isel(**picks)

    def reduce(self, dim: str, fn: Callable[[Tensor, int], Tensor]) -> LabelledResult:
        """Apply ``fn(tensor, axis)`` to every value; it must remove that axis (e.g. ``torch.amax``)."""
        ax = self._axis(dim)
        values = {}
        for name, v in self.values.items():
            out, want = fn(v, ax), tuple(v.shape[:ax] + v.shape[ax + 1 :])
            if not isinstance(out, Tensor) or tuple(out.shape) != want:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ResultError(f"reduce over {dim!r} gave {got} for {name!r}, not {want}; fn must drop axis {ax}.")
            values[name] = out
        rest = tuple(d for d in self.dims if d != dim)
        return replace(self, dims=rest, coords={d: self.coords[d] for d in rest}, values=values)

    def mean(self, dim: str) -> LabelledResult:
        """NaN-aware mean over ``dim``: missing cells are skipped; bool/int values become float64 rates."""
        return self.reduce(dim, _nanmean)

    def with_values(self, **new_values: Tensor) -> LabelledResult:
        """A copy with values added or replaced, validated like the constructor (results are frozen)."""
        return replace(self, values={**self.values, **new_values})

    def to_dataframe(self):
        """Tidy long form: one row per cell, columns = dims, then one column per value (a pandas DataFrame)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("LabelledResult.to_dataframe needs pandas: pip install pandas") from None
        # itertools.product varies the last dim fastest, exactly like a row-major reshape(-1).
        grid = list(itertools.product(*(self.coords[d] for d in self.dims)))
        cols: dict[str, Any] = {d: [cell[i] for cell in grid] for i, d in enumerate(self.dims)}
        for name, v in self.values.items():
            cols[name] = v.detach().cpu().reshape(-1).numpy()
        return pd.DataFrame(cols, index=pd.RangeIndex(len(grid)))

    def to_dict(self, max_cells: int = 100_000) -> dict[str, Any]:
        """A JSON-able summary with values as nested lists (NaN -> None), for small results."""
        cells = math.prod(self.sizes.values()) * len(self.values)
        if cells > max_cells:
            raise ResultError(f"{cells} cells exceed max_cells={max_cells}; use to_dataframe() or save() instead.")
        values = {k: _nan_to_none(v.detach().cpu().tolist()) for k, v in self.values.items()}
        return {"kind": self.kind, **self._header(), "values": values}

    def _header(self) -> dict[str, Any]:
        coords = {d: list(c) for d, c in self.coords.items()}
        return {
            "dims": list(self.dims),
            "coords": coords,
            "baselines": self.baselines,
            "metric": self.metric,
            "config": self.config,
            "provenance": self.provenance,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path/`` as manifest.json (labels, type tags, dicts) + tensors.safetensors (values)."""
        # clone: safetensors refuses tensors that share storage (e.g. with_values(a=x, b=x)).
        tensors = {f"values/{k}": v.detach().cpu().clone() for k, v in self.values.items()}
        manifest = {
            "result_kind": self.kind,  # "kind" itself is the artefact's: "labelled_result"
            **self._header(),
            "coord_types": {d: _tag(c) for d, c in self.coords.items()},
            "value_names": list(self.values),
        }
        return save_artefact(path, KIND, tensors, manifest)

    @classmethod
    def load(cls, path: str | Path) -> LabelledResult:
        """Read a folder written by :meth:`save`; raise ArtefactError if it is not a valid result."""
        m, t = load_artefact(path, KIND)
        try:
            kind, dims, types = m["result_kind"], m["dims"], m["coord_types"]
            coords = {d: tuple(m["coords"][d]) for d in dims}
            values = {k: t[f"values/{k}"] for k in m["value_names"]}
            bad = [d for d in dims if types[d] != "mixed" and any(type(x).__name__ != types[d] for x in coords[d])]
        except (KeyError, TypeError) as e:
            raise ArtefactError(f"{path} lacks or mangles {e} in its manifest; save the result again.") from None
        if bad:
            raise ArtefactError(f"{path}: the labels of {bad} do not have their recorded types; save the result again.")
        mangled = [k for k in ("baselines", "metric", "config", "provenance") if not isinstance(m.get(k, {}), dict)]
        if mangled or not isinstance(kind, str) or not all(isinstance(d, str) for d in dims):
            raise ArtefactError(
                f"{path} lacks or mangles {mangled or ['result_kind', 'dims']} in its manifest; save the result again."
            )
        try:
            return cls(
                kind,
                tuple(dims),
                coords,
                values,
                m.get("baselines", {}),
                m.get("metric", {}),
                m.get("config", {}),
                m.get("provenance", {}),
            )
        except ValueError as e:
            raise ArtefactError(f"{path} does not form a valid LabelledResult ({e}); save the result again.") from None
