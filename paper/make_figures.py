"""Redraw the paper's figures from a saved run folder -- no model is loaded.

    python paper/make_figures.py runs/paper-organism figures/organism

writes one self-contained HTML file per figure (steering sweep, refusal re-introduction, window
projection with random controls, activation patching) and the report, all from the result
folders that `persona-gate run` saved. Computing and drawing are separate steps, so a figure can
be restyled and redrawn without rerunning anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from persona_gate.plots import figure_for, save_html
from persona_gate.plots.report import FIGURE_STAGES, write_report
from persona_gate.results import LabelledResult


def make_figures(run_dir: str | Path, out: str | Path) -> list[Path]:
    run_dir, out = Path(run_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stage, _ in FIGURE_STAGES:
        result = LabelledResult.load(run_dir / stage)
        written.append(save_html(figure_for(result), out / f"{stage}.html"))
    written.append(write_report(run_dir, out / "report.html"))
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    for path in make_figures(args.run_dir, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
