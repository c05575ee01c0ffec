"""Redraw the paper's figures from a saved run folder -- no model is loaded.

    python paper/make_figures.py runs/paper-organism figures/organism
    python paper/make_figures.py runs/paper-organism figures/organism --png   # + a PNG of each

writes one self-contained HTML file per figure (steering sweep, refusal re-introduction, window
projection with random controls, activation patching) and the report, all from the result
folders that `persona-gate run` saved; ``--png`` also captures each figure with headless
Chromium (Debian's `chromium`), as the README's galleries are made. Computing and drawing are separate steps, so a figure can
be restyled and redrawn without rerunning anything.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from persona_gate.plots import figure_for, save_html
from persona_gate.plots.report import figure_stages, write_report
from persona_gate.results import LabelledResult


def make_figures(run_dir: str | Path, out: str | Path) -> list[Path]:
    run_dir, out = Path(run_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stage, _ in figure_stages(run_dir):
        result = LabelledResult.load(run_dir / stage)
        written.append(save_html(figure_for(result), out / f"{stage}.html"))
    written.append(write_report(run_dir, out / "report.html"))
    return written


def capture_png(html: Path, png: Path, size: tuple[int, int] = (900, 560)) -> Path:
    """A screenshot of ``html`` in headless Chromium (a figure draws in well under the time budget)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit(
            "--png needs Debian's chromium on PATH (apt-get install chromium); the HTML figures are written."
        )
    png.unlink(missing_ok=True)  # an old screenshot must not pass for a new one
    with tempfile.TemporaryDirectory() as profile:
        try:
            subprocess.run(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--disable-background-networking",
                    f"--user-data-dir={profile}",
                    f"--window-size={size[0]},{size[1]}",
                    "--virtual-time-budget=8000",
                    f"--screenshot={png}",
                    html.resolve().as_uri(),
                ],
                capture_output=True,
                timeout=180,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SystemExit(f"chromium took over 180 s on {html}; open it in a browser instead.") from None
    if not png.is_file():
        raise SystemExit(f"chromium wrote no screenshot of {html}; open it in a browser instead.")
    return png


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("out")
    ap.add_argument("--png", action="store_true", help="also capture each figure as PNG with headless Chromium")
    args = ap.parse_args(argv)
    for path in make_figures(args.run_dir, args.out):
        print(path)
        if args.png and path.name != "report.html":
            print(capture_png(path, path.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
