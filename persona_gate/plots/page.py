"""The page shell every persona_gate HTML report shares: style, a footer that records what
reproduces the numbers, and figures with stable element ids (a report written twice from the
same results is the same file).

Example::

    page = html_page("title", ["<h1>...</h1>", figure_html(fig, "sweep")], seed=0, versions={"torch": "2.13"})
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1b1b1b; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 1rem 0; } td, th { padding: .3rem .8rem; border-bottom: 1px solid #ddd;
       text-align: left; vertical-align: top; } th { background: #f4f4f4; }
.num { font-variant-numeric: tabular-nums; text-align: right; }
.missing { color: #a33; } footer { color: #666; font-size: .85rem; margin-top: 3rem; }
"""


def html_page(title: str, body_parts: Iterable[str], seed: Any, versions: Mapping[str, Any]) -> str:
    """One persona_gate HTML page: head with ``title`` and the shared style, ``body_parts``, a footer.

    ``title`` is plain text (escaped here); ``body_parts`` are HTML fragments, joined one per line;
    the footer records ``seed`` and the package ``versions`` (``{name: version}``) that reproduce
    the numbers. Every persona_gate report (run, checkpoint comparison) is built with this shell.
    """
    footer_versions = ", ".join(f"{k} {v}" for k, v in versions.items())
    return "\n".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{html.escape(title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            *body_parts,
            f"<footer>seed {html.escape(str(seed))}; {html.escape(footer_versions)}</footer>",
            "</body></html>",
        ]
    )


def figure_html(fig: Any, name: str, js_done: bool = False) -> str:
    """``fig`` as an HTML fragment with a stable element id (``pg-<name>``), so a report written twice
    from the same results is the same file; plotly.js inline unless ``js_done``."""
    import plotly.io as pio

    # plotly.js once, inline: the report must work offline.
    return pio.to_html(fig, full_html=False, include_plotlyjs=not js_done, default_width="100%", div_id=f"pg-{name}")
