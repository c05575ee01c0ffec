"""The one engine that runs a grid of cells: prefix reuse, resumable cells, many processes, progress.

:func:`run_grid` takes a :class:`~persona_gate.grid.spec.GridSpec` and

1. restores every cell its store already holds (a killed run resumes at the cell it stopped in);
2. scores the remaining :class:`~persona_gate.grid.spec.Scored` cells by prefix reuse, one call
   of :func:`~persona_gate.grid.prefix.cell_logprobs` per prompt set (the clean prompts run once,
   each cell re-runs only the blocks from its first changed layer), ``derive`` reducing each as it
   completes, so a large grid never holds more than one group of cells' log-probs;
3. computes the remaining :class:`~persona_gate.grid.spec.Computed` cells;
4. writes each finished cell to the store as soon as it exists.

Under ``torchrun`` / ``accelerate launch`` with a shared store (see :mod:`~persona_gate.grid.shard`)
every process decides what is left from the same folder between two barriers, computes its share
(fixed chunks of scored cells, every ``N``-th computed cell), writes it, and after a barrier reads
the others' cells: the result is bit-identical to one process.

Example::

    res = run_grid(model, spec, store=open_store("runs/x/cells/sweep", "steering_sweep", layers=[2, 4]))
    res.tensor("refused", ("harmful",), (2, 4), (0.0, 4.0))
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from ..models.protocol import ChatModel
from .prefix import cell_logprobs
from .shard import current, missing_error, share_of
from .spec import Computed, GridResult, GridSpec, Key, Scored
from .store import MemoryStore, Store


def run_grid(
    model: ChatModel,
    spec: GridSpec,
    *,
    store: Store | None = None,
    batch_size: int = 32,
    max_tokens: int | None = None,
    reuse: bool = True,
    progress: bool = False,
    bar: Any = None,
) -> GridResult:
    """Every cell of ``spec``, restored from ``store`` where finished, the rest computed and stored
    (see the module docstring). ``batch_size``/``max_tokens``/``reuse`` shape the scored cells'
    forwards (:func:`~persona_gate.grid.prefix.cell_logprobs`; ``reuse=False``: one full forward per
    cell); ``bar``: an open progress bar to advance instead of a new one."""
    store = store if store is not None else MemoryStore()
    workers = current()
    split = workers.many and store.shared
    if split:  # every process decides what is left from the same folder, before any of them adds to it
        workers.barrier()
    got: dict[Key, dict[str, Any]] = {}
    todo: list[Key] = []
    for key in spec.cells:
        done = store.get(key)
        if done is None:
            todo.append(key)
        else:
            got[key] = done
    if split:
        workers.barrier()
    own = bar is None
    bar = bar if bar is not None else tqdm(total=len(spec.cells), desc=spec.desc or spec.kind, disable=not progress)
    bar.update(len(got))
    try:
        clean = _score(
            model,
            spec,
            todo,
            got,
            store,
            bar,
            (workers.rank, workers.world) if split else (0, 1),
            batch_size=batch_size,
            max_tokens=max_tokens,
            reuse=reuse,
        )
        computed = [k for k in todo if isinstance(spec.cells[k], Computed)]
        for key in share_of(computed, workers) if split else computed:
            got[key] = spec.cells[key].compute()  # type: ignore[union-attr]
            store.put(key, got[key])
            bar.update()
        if split:  # the other processes' cells, once they have all written theirs
            workers.barrier()
            missing = [k for k in todo if k not in got]
            for key in missing:
                done = store.get(key)
                if done is None:
                    raise missing_error("cells", [k for k in missing if not store.has(k)])
                got[key] = done
                bar.update()
    finally:
        if own:
            bar.close()
    return GridResult({k: got[k] for k in spec.cells}, clean)


def _score(
    model: ChatModel,
    spec: GridSpec,
    todo: list[Key],
    got: dict,
    store: Store,
    bar: Any,
    share: tuple[int, int],
    **forward: Any,
) -> dict[str, Any]:
    """The scored cells left, by prefix reuse, one prompt set at a time; their clean runs."""
    clean: dict[str, Any] = {}
    left = set(todo)
    derive = spec.derive
    for name in spec.prompt_sets():
        keys = [k for k in spec.scored(name) if k in left]
        if not keys:
            continue

        def finished(i: int, lp: Any, clean_lp: Any, keys: list[Key] = keys) -> None:
            got[keys[i]] = derive(keys[i], lp, clean_lp)  # type: ignore[misc]
            store.put(keys[i], got[keys[i]])
            bar.update()

        cells = [spec.cells[k].interventions for k in keys]  # type: ignore[union-attr]
        clean[name], _ = cell_logprobs(
            model, spec.prompts[name], cells, base=spec.base, on_cell=finished, share=share, **forward
        )
    return clean


__all__ = ["Scored", "Computed", "GridSpec", "GridResult", "run_grid"]
