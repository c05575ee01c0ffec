"""The two defences measured: screening validated on organism fine-tunes, and the guard's grid.

    python paper/defences.py                       # the organism (about 4 min on 2 CPU cores)
    python paper/defences.py --gemma               # + gemma3-270m-chat: screening on 3 datasets, guard grid (~35 min)

Writes ``paper/results/defences/``: ``screening-<model>.json`` (the validation: every dataset's
score and measured refusal drop, Spearman's rho, the per-example AUROC) and
``guard-<model>.json`` (the guard's ``summary.json``: the recommended setting, its random-direction
control, the Pareto front, the generated-reply check) plus the saved grids. Everything heavy
(datasets, screenings, fine-tunes' measurements, grid cells) goes to ``--work`` (default
``runs/defences``), so a killed run resumes there. The README's numbers are rendered from these
files by ``benchmarks/readme.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCREENINGS = {  # model -> validate_screening options: Gemma on three datasets, one seed (a fine-tune is ~2 min there)
    "organism": {},
    "gemma3-270m-chat": {
        "base": "gemma3-270m-chat",
        "fractions": (0.0, 0.25, 0.5),
        "n_examples": 320,
        "steps": 40,
        "batch_size": 8,
        "seeds": (0,),
        "n_eval": 64,
    },
}
GUARDS = {  # model -> guard_grid options: the organism at the defaults, Gemma on a coarser grid (CPU time)
    "organism": {},
    "gemma3-270m-chat": {"width": 6, "percentiles": (50, 75, 90), "n": 16},
}


def guard(model_name: str, out: Path, work: Path) -> dict:
    import persona_gate as pg
    from persona_gate.guard.grid import guard_grid
    from persona_gate.guard.summary import format_guard, guard_summary
    from persona_gate.io import atomic_write_text

    start = time.perf_counter()
    model = pg.load_chat_model(model_name)
    saved = work / f"guard-{model_name}" / "persona"  # fitted once and kept, so a resumed grid finds its cells
    if saved.is_dir():
        persona = pg.DirectionSet.load(saved, model=model)
    else:
        persona = pg.fit_persona_and_refusal(model, progress=False).persona
        persona.save(saved)
    cells = work / f"guard-{model_name}" / "guard.cells"
    cells_restored = len(list(cells.glob("*.safetensors"))) if cells.is_dir() else 0
    res = guard_grid(model, persona, checkpoint=cells, **GUARDS[model_name])
    print(format_guard(res))
    res.save(out / f"guard-{model_name}")
    summary = {
        "model": model_name,
        **guard_summary(res),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in GUARDS[model_name].items()},
        "seconds": round(time.perf_counter() - start, 1),  # this invocation's: cells restored from --work are not timed
        "cells_restored": cells_restored,
    }
    atomic_write_text(out / f"guard-{model_name}.json", json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    from persona_gate.io import atomic_write_text
    from persona_gate.screening.summary import format_validation
    from persona_gate.screening.validation import validate_screening

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "results" / "defences")
    p.add_argument("--work", type=Path, default=Path("runs/defences"))
    p.add_argument(
        "--gemma", action="store_true", help="also run gemma3-270m-chat's screening validation and guard grid"
    )
    p.add_argument("--only", choices=("screening", "guard"), default=None, help="run one of the two")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ["organism"] + (["gemma3-270m-chat"] if args.gemma else []):
        if args.only in (None, "screening"):
            v = validate_screening(args.work / f"screening-{name}", **SCREENINGS[name])
            print(format_validation(v))
            atomic_write_text(args.out / f"screening-{name}.json", v.to_json(indent=2) + "\n")
        if args.only in (None, "guard"):
            guard(name, args.out, args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
