"""The one engine for grids of cells: declare a grid, run it, cost it, resume it, split it.

* :mod:`~persona_gate.grid.spec` -- :class:`GridSpec`: cells keyed by coordinates, each
  :class:`Scored` (interventions scored at the first response token) or :class:`Computed`;
* :mod:`~persona_gate.grid.run` -- :func:`run_grid`, the only cell loop;
* :mod:`~persona_gate.grid.prefix` -- prefix reuse, how scored cells avoid recomputing blocks;
* :mod:`~persona_gate.grid.store` -- the cell store that makes grids resumable;
* :mod:`~persona_gate.grid.shard` -- the processes of a torchrun / accelerate run;
* :mod:`~persona_gate.grid.cost` -- what a grid runs, counted before it runs.

Every experiment, the patching map, the guard grid and screening are grids; nothing else
loops over cells, checkpoints them or splits them over processes.

Example::

    from persona_gate.grid import GridSpec, Scored, run_grid
    spec = GridSpec("demo", {(k,): Scored("harmful", (Steer(persona, 4.0, layers=[k]),)) for k in (2, 4)},
                    prompts={"harmful": harmful}, derive=lambda key, lp, clean: {"lp": lp})
    run_grid(model, spec).tensor("lp", (2, 4))
"""

from .cost import Cost, cost_grid
from .run import run_grid
from .shard import ONE, Workers, current, from_environment, sharing
from .spec import Computed, GridResult, GridSpec, Scored
from .store import CellStore, MemoryStore, Store, open_store

__all__ = [
    "ONE",
    "CellStore",
    "Computed",
    "Cost",
    "GridResult",
    "GridSpec",
    "MemoryStore",
    "Scored",
    "Store",
    "Workers",
    "cost_grid",
    "current",
    "from_environment",
    "open_store",
    "run_grid",
    "sharing",
]
