"""Reading a monitor result without a model: flagged turns, a per-turn table, one-line texts.

Imports foundations only, so plots and reports can use it without loading the model stack.

Example::

    flagged_turns(result)                 # [3]
    print(format_monitor(result))
"""

from __future__ import annotations

from ..errors import ConversationError
from ..results import LabelledResult


def flagged_turns(result: LabelledResult, layer: int | None = None) -> list[int]:
    """Turns flagged at ``layer`` (default: the calibration's flag layer)."""
    if "flagged" not in result.values:
        raise ConversationError("this monitor result has no flags; pass calibration=calibrate(model, persona).")
    layer = result.baselines.get("flag_layer") if layer is None else layer
    if layer is None:
        raise ConversationError("the calibration's flag layer was not monitored; pass layer=... explicitly.")
    flags = result.sel(layer=layer)["flagged"]
    return [t for t, f in zip(result.coords["turn"], flags.tolist()) if f]


def short_text(text: str | None, width: int, none: str = "-") -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis; ``none`` for a missing text."""
    if text is None:
        return none
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_monitor(result: LabelledResult, layer: int | None = None, width: int = 40) -> str:
    """A per-turn table at one layer (default: the flag layer, else the last)."""
    layers = list(result.coords["layer"])
    if layer is None:
        flag_layer = result.baselines.get("flag_layer")
        layer = flag_layer if flag_layer in layers else layers[-1]
    r = result.sel(layer=layer)
    turns = result.config.get("turns", [])
    head = f"{'turn':>4}  {'user':<{width}}  {'persona@start':>13}  {'persona@resp':>12}  {'refusal@start':>13}  {'refusal@resp':>12}  flag"
    lines = []
    if "flagged" in result.values:
        b = result.baselines
        cal = b.get("calibration", {})
        fpr = cal.get("test_fpr", {}) if layer == b.get("flag_layer") else {}  # measured at the flag layer only
        lines.append(
            f"flag: persona@{b.get('flag_reading')} > {b['threshold'][str(layer)]:.3f} at layer {layer}"
            + (f" (held-out FPR {fpr['rate']:.2f} = {fpr['k']}/{fpr['n']} safe-persona turns)" if fpr.get("n") else "")
        )
    lines.append(
        f"layer {layer} ({result.config.get('site_kind', 'resid_pre')}); {result.config.get('persona')} / {result.config.get('refusal')}"
    )
    lines += [head, "-" * len(head)]

    def num(x: float) -> str:
        return "nan" if x != x else f"{x:.2f}"

    for i, t in enumerate(result.coords["turn"]):
        user = short_text(turns[i]["user"], width) if i < len(turns) else ""
        flag = ("FLAG" if bool(r["flagged"][i]) else "") if "flagged" in r.values else ""
        lines.append(
            f"{t:>4}  {user:<{width}}  {num(float(r['persona_start'][i])):>13}  {num(float(r['persona_response'][i])):>12}  "
            f"{num(float(r['refusal_start'][i])):>13}  {num(float(r['refusal_response'][i])):>12}  {flag}".rstrip()
        )
    return "\n".join(lines)
