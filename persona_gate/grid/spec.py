"""A grid of cells, declared: what to compute, never how.

Most of what persona_gate computes with a model has one shape: prompts x cells -> per-cell
values -> a labelled result. A :class:`GridSpec` states it as a value: its ``cells`` map each
cell's coordinates (a tuple such as ``("harmful", 4, 2.0)``) to either

* :class:`Scored` -- interventions on top of the grid's ``base``, scored at the first response
  token on one of the grid's named prompt sets; ``derive(key, logprobs, clean)`` turns the cell's
  ``[prompt, vocab]`` log-probs (and the clean run's) into the tensors kept for it; or
* :class:`Computed` -- any other computation of one cell (a patching pair, a screening chunk,
  a reply KL), which returns the tensors kept for it, with its cost when it can be counted.

:func:`~persona_gate.grid.run.run_grid` runs a spec: prefix reuse for the scored cells, a cell
store for resuming, multi-process splitting and progress; :func:`~persona_gate.grid.cost.cost_grid`
counts what it would run. :meth:`GridResult.tensor` lays the kept values out along coordinates.

Example::

    spec = GridSpec("demo", prompts={"harmful": harmful},
                    cells={(k, a): Scored("harmful", (Steer(persona, a, layers=[k]),)) for k in (2, 4) for a in (1.0, 4.0)},
                    derive=lambda key, lp, clean: {"refused": scorer.from_logprobs(lp)[1]})
    res = run_grid(model, spec)
    res.tensor("refused", (2, 4), (1.0, 4.0))            # [layer, alpha, prompt]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

Key = tuple[Hashable, ...]
Derive = Callable[[Key, Tensor, Tensor], dict[str, Tensor]]


@dataclass(frozen=True)
class Scored:
    """A cell scored at the first response token: ``interventions`` (on top of the grid's base)
    on the grid's prompt set ``prompts``. No interventions: the clean run, which costs nothing."""

    prompts: str
    interventions: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Computed:
    """A cell computed by ``compute()``, which returns the tensors kept for it; ``cost()`` counts
    what it runs (a :class:`~persona_gate.grid.cost.Cost`), when that can be known beforehand."""

    compute: Callable[[], dict[str, Tensor]]
    cost: Callable[[], Any] | None = None


@dataclass(frozen=True)
class GridSpec:
    """A declared grid (see the module docstring). ``base``: interventions every scored cell runs
    under (the compliant state by steering); ``desc``: the progress bar's label."""

    kind: str
    cells: Mapping[Key, Scored | Computed]
    prompts: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    derive: Derive | None = None
    base: tuple[Any, ...] = ()
    desc: str | None = None

    def __post_init__(self) -> None:
        for key, cell in self.cells.items():
            if not isinstance(key, tuple):
                raise ConfigError(f"grid {self.kind!r}: cell keys are coordinate tuples, got {key!r}.")
            if isinstance(cell, Scored):
                if cell.prompts not in self.prompts:
                    raise ConfigError(
                        f"grid {self.kind!r}: cell {key} scores prompt set {cell.prompts!r}, which the grid "
                        f"does not hold (it has {sorted(self.prompts)})."
                    )
                if self.derive is None:
                    raise ConfigError(f"grid {self.kind!r} has scored cells but no derive function.")
            elif not isinstance(cell, Computed):
                raise ConfigError(f"grid {self.kind!r}: cell {key} is {type(cell).__name__}, not Scored or Computed.")

    def prompt_sets(self) -> list[str]:
        """The prompt sets its scored cells use, in the order they first appear."""
        return list(dict.fromkeys(c.prompts for c in self.cells.values() if isinstance(c, Scored)))

    def scored(self, prompts: str) -> list[Key]:
        """The keys of the cells scored on ``prompts``, in declaration order."""
        return [k for k, c in self.cells.items() if isinstance(c, Scored) and c.prompts == prompts]


@dataclass
class GridResult:
    """What a grid kept per cell, and the clean run's first-token log-probs per prompt set (for
    each set the run scored; a set whose every cell was restored from the store has none)."""

    cells: dict[Key, dict[str, Tensor]]
    clean: dict[str, Tensor]

    def __getitem__(self, key: Key) -> dict[str, Tensor]:
        return self.cells[key]

    def tensor(self, name: str, *axes: Sequence[Hashable], prefix: Key = (), fill: float | None = None) -> Tensor:
        """Value ``name`` of the cells ``prefix + (a, b, ...)`` for every ``a`` in ``axes[0]``, ``b`` in
        ``axes[1]``..., stacked: ``[len(axes[0]), ..., *value shape]``. A cell the grid lacks is
        ``fill`` (an error when ``fill`` is None)."""
        keys = [prefix + combo for combo in itertools.product(*axes)]
        present = [self.cells[k][name] for k in keys if k in self.cells]
        if len(present) < len(keys) and fill is None:
            missing = [k for k in keys if k not in self.cells]
            raise KeyError(f"the grid has no cells {missing[:3]} (of {len(missing)} missing)")
        like = present[0] if present else torch.zeros(())
        parts = [
            self.cells[k][name]
            if k in self.cells
            else torch.full_like(like, fill, dtype=like.dtype if like.is_floating_point() else torch.float32)
            for k in keys
        ]  # type: ignore[arg-type]
        if parts and any(p.dtype != parts[0].dtype for p in parts):
            parts = [p.float() for p in parts]
        return torch.stack(parts).reshape(*(len(a) for a in axes), *like.shape)
