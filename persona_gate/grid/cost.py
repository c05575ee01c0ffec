"""What a grid costs, counted before it runs: the forwards, tokens and block-tokens that
:func:`~persona_gate.grid.run.run_grid` will execute for a :class:`~persona_gate.grid.spec.GridSpec`,
and the peak of the block records its prefix reuse holds meanwhile (``Cost.records``).

The counts come from the same planner the engine runs (:func:`~persona_gate.grid.prefix.plan_cells`),
so a cost plan (``persona-gate run --plan``) equals what a run executes; ``tests/experiments/test_plan.py``
counts a real run's block calls with hooks and compares, stage by stage.

Example::

    spec = sweep_grid(model, persona, groups, layers=[2, 4], alphas=[0.0, 4.0])
    cost_grid(model, spec, batch_size=32).block_tokens
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.activations import as_rendered, padded_batches
from ..models.adapter import unembedded_rows
from ..models.protocol import ChatModel
from .prefix import plan_cells


@dataclass
class Cost:
    """What a computation runs: ``forwards`` prompts through (part of) the model (a re-run of one
    cell over one prompt counts once), the ``tokens`` (padded positions) those passes take in,
    ``block_tokens`` = tokens x blocks each pass completes (the compute), ``head_rows`` positions
    unembedded, ``generated``: decoding steps x rows, an upper bound (EOS ends replies early),
    ``attention``: rows x seq^2 x blocks, the causal attention scores of those passes, and
    ``records``: the most residual-stream values (each ``d_model`` wide vector counts ``d_model``)
    that block replay holds at once -- a peak, so adding two costs keeps the larger (see
    :func:`cells_cost` and :func:`record_values`)."""

    forwards: int = 0
    tokens: int = 0
    block_tokens: int = 0
    head_rows: int = 0
    generated: int = 0
    attention: int = 0
    records: int = 0

    def add(self, rows: int, seq: int, blocks: int, head_rows: int) -> None:
        self.forwards += rows
        self.tokens += rows * seq
        self.block_tokens += rows * seq * blocks
        self.head_rows += head_rows
        self.attention += rows * seq * seq * blocks

    def hold(self, values: int) -> None:
        """``values`` residual-stream values held at once: the peak if larger."""
        self.records = max(self.records, values)

    def __iadd__(self, other: Cost) -> Cost:
        for k in ("forwards", "tokens", "block_tokens", "head_rows", "generated", "attention"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.hold(other.records)
        return self


def batch_shapes(model: ChatModel, prompts: Sequence[Any], batch_size: int) -> list[tuple[int, int]]:
    """``(rows, padded length)`` of every padded batch the runners make of ``prompts``."""
    rendered = as_rendered(model, prompts)
    return [
        (len(pb.indices), int(pb.input_ids.shape[1]))
        for pb in padded_batches(rendered, batch_size, model.tokenizer.pad_token_id)
    ]


def cells_cost(
    model: ChatModel,
    prompts: Sequence[Any],
    cells: Sequence[Sequence[Any]],
    *,
    base: Sequence[Any] = (),
    batch_size: int = 32,
    reuse: bool = True,
) -> Cost:
    """What :func:`cell_logprobs` runs for these arguments, without running it, and the records it holds:
    every padded batch's block inputs at each first layer a cell re-runs from (:func:`record_values`)."""
    plan, _, _, chains = plan_cells(model, cells, base, reuse=reuse)
    cost = Cost()
    shapes = batch_shapes(model, prompts, batch_size)
    cost.hold(record_values(model, shapes, len({ch.start for ch in chains})))
    for rows, seq in shapes:
        cost.add(rows, seq, plan.n_layers, unembedded_rows(model, rows, seq))  # the clean run
        for blocks, full in zip(plan.blocks(), plan.full):
            if blocks:  # a re-run unembeds the last position itself; a full forward as last_logits does
                cost.add(rows, seq, blocks, unembedded_rows(model, rows, seq) if full else rows)
    return cost


def record_values(model: ChatModel, shapes: Sequence[tuple[int, int]], layers: int) -> int:
    """Residual values recorded when ``layers`` block inputs are kept for every ``(rows, seq)`` batch of
    ``shapes`` (all of them held at once, as :func:`~persona_gate.grid.prefix.cell_logprobs` does):
    ``layers x sum(rows x seq) x d_model``. The blocks' other call arguments (masks, rotary tables,
    shared by every block of a batch) are not counted."""
    return layers * sum(rows * seq for rows, seq in shapes) * int(model.cfg.d_model)


def cost_grid(model: ChatModel, spec: Any, *, batch_size: int = 32, reuse: bool = True) -> tuple[Cost, bool]:
    """What :func:`~persona_gate.grid.run.run_grid` runs for ``spec`` with nothing stored yet, and
    whether the count is exact (False when a computed cell cannot say its cost)."""
    from .spec import Computed

    cost, exact = Cost(), True
    for name in spec.prompt_sets():
        cells = [spec.cells[k].interventions for k in spec.scored(name)]
        cost += cells_cost(model, spec.prompts[name], cells, base=spec.base, batch_size=batch_size, reuse=reuse)
    for cell in spec.cells.values():
        if isinstance(cell, Computed):
            if cell.cost is None:
                exact = False
            else:
                cost += cell.cost()
    return cost, exact
