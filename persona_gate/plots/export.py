"""Writing figures to disk: self-contained HTML here; PNG only where kaleido happens to exist.

HTML embeds plotly.js by default (``include_plotlyjs="inline"``, ~4.6 MB) so the file opens
offline and stays readable years later; ``"cdn"`` writes a small file that loads plotly.js from
the CDN. persona_gate does not depend on kaleido (which needs its own Chrome): the report's PNGs
are rendered from the HTML by headless Chromium, outside this module. :func:`save_png` uses
kaleido only when it is installed and otherwise raises an error that says so.

Example::

    save_html(fig, "report/sweep.html")                          # works offline
    save_html(fig, "report/sweep.html", include_plotlyjs="cdn")  # small, needs the network
    save_png(fig, "sweep.png")                                   # only with kaleido installed
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import plotly.graph_objects as go

from ._common import PlotError

_PLOTLYJS = {"inline": True, "cdn": "cdn"}


def save_html(
    fig: go.Figure, path: str | os.PathLike, *, include_plotlyjs: str = "inline", full_html: bool = True
) -> Path:
    """Write ``fig`` as HTML and return the path; ``include_plotlyjs`` is ``"inline"`` or ``"cdn"``."""
    if include_plotlyjs not in _PLOTLYJS:
        raise PlotError(f"include_plotlyjs must be 'inline' (offline) or 'cdn', not {include_plotlyjs!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=_PLOTLYJS[include_plotlyjs], full_html=full_html)
    return path


def save_png(
    fig: go.Figure, path: str | os.PathLike, *, width: int = 1100, height: int = 600, scale: float = 2.0
) -> Path:
    """Write a PNG through kaleido when it is installed; otherwise raise (see the module docstring)."""
    if importlib.util.find_spec("kaleido") is None:
        raise PlotError(
            "PNG export needs kaleido and a Chrome it can drive, which persona_gate does not install; "
            "write HTML with save_html() and render PNGs from the HTML report with headless Chromium, "
            "or `pip install kaleido` and run `plotly_get_chrome`."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_image(path, format="png", width=width, height=height, scale=scale)
    return path
