"""The package's layout is its architecture: imports flow one way, and this test makes it so.

Every ``import`` in ``persona_gate/`` (module level and inside functions alike) is read from the
source with ``ast`` and checked against the layers below. A new import that points upward, a plot
that reaches into computation, or a reach into another module's private names fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "persona_gate"

# Layer of each top-level entry; a module may import its own layer and the layers below.
LAYER: dict[str, int] = {
    "errors": 0,
    "sites": 0,
    "io": 0,
    "results": 0,
    "provenance": 0,
    "resources": 0,
    "runtime": 0,  # foundations
    "prompts": 1,
    "models": 2,
    "core": 3,
    "grid": 4,  # the one engine for grids of cells
    "scoring": 5,
    "experiments": 6,
    "organism": 6,
    "finetune": 6,  # experiments, the bundled organisms, fine-tuning real weights
    "monitoring": 6,
    "redteam": 6,
    "compare": 6,
    "export": 6,
    "screening": 6,
    "guard": 6,  # applications
    "plots": 7,  # figures and HTML reports
    "cli": 8,
}
FOUNDATIONS = {"errors", "sites", "io", "results", "provenance", "resources", "runtime"}
APPLICATIONS = {"monitoring", "redteam", "compare", "export", "screening", "guard"}
# The one declared edge between applications: the guard is evaluated on the red team's attacks.
BUILDS_ON = {("guard", "redteam")}
# Modules that read results without a model: foundations and the statistics only.
PURE = {
    "scoring.stats",
    "scoring.labels",
    "monitoring.summary",
    "compare.summary",
    "redteam.result",
    "guard.summary",
    "screening.summary",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """``(imported module relative to persona_gate, imported names, line)`` for every import."""
    is_pkg = path.name == "__init__.py"
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("persona_gate"):
                target = node.module.removeprefix("persona_gate").lstrip(".")
            else:
                continue
            names = [a.name for a in node.names]
            if not target and names == ["__version__"]:
                continue  # the package's version string, defined in its root for every layer to read
            if not node.module:  # "from . import x": x is a module of that package
                out += [(f"{target}.{n}".strip("."), [], node.lineno) for n in names]
            else:
                out.append((target, names, node.lineno))
        elif isinstance(node, ast.Import):
            out += [
                (a.name.removeprefix("persona_gate").lstrip("."), [], node.lineno)
                for a in node.names
                if a.name.startswith("persona_gate.")
            ]
    return out


def _top(module: str) -> str:
    return module.split(".")[0]


def _violations() -> list[str]:
    modules = _modules()
    bad = []
    for name, path in sorted(modules.items()):
        if not name:  # persona_gate/__init__.py: the lazy public API, resolved by name on use
            continue
        me = _top(name)
        for target, names, line in _imports(name, path):
            where = f"persona_gate/{path.relative_to(PKG)}:{line} imports {target or 'persona_gate'}"
            if not target:
                bad.append(f"{where}: import a module, not the package root")
                continue
            them = _top(target)
            if them not in LAYER:
                bad.append(f"{where}: {them!r} is not in the layout's table; add it to LAYER")
            elif LAYER[them] > LAYER[me]:
                bad.append(f"{where}: layer {them} ({LAYER[them]}) is above {me} ({LAYER[me]})")
            if me in APPLICATIONS and them in APPLICATIONS and them != me and (me, them) not in BUILDS_ON:
                bad.append(f"{where}: one application imports another")
            if me == "plots" and them != "plots" and them not in FOUNDATIONS and target not in PURE:
                bad.append(f"{where}: plots import only foundations and result readers {sorted(PURE)}")
            if name in PURE and them not in FOUNDATIONS and target not in PURE:
                bad.append(f"{where}: a result reader imports only foundations and the statistics")
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and target != name:
                bad.append(f"{where}: private names {private} of another module")
    return bad


def test_imports_flow_one_way():
    bad = _violations()
    assert not bad, "\n".join(bad)


def test_the_contract_can_fail(tmp_path, monkeypatch):
    """The checker itself: an upward import, a plot reaching into computation and a private import are caught."""
    fake = tmp_path / "persona_gate"
    for rel, text in {
        "__init__.py": "",
        "errors.py": "from .core.activations import cache_activations\n",
        "core/__init__.py": "",
        "core/activations.py": "from ..prompts.chat import _private\n",
        "plots/__init__.py": "",
        "plots/figs.py": "def f():\n    from ..core import activations\n",
        "prompts/__init__.py": "",
        "prompts/chat.py": "",
    }.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    bad = "\n".join(_violations())
    assert "errors.py:1 imports core.activations: layer core (3) is above errors (0)" in bad
    assert "private names ['_private']" in bad
    assert "plots/figs.py:2 imports core: plots import only" in bad


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("persona_gate", ["torch", "transformer_lens", "transformers", "persona_gate.core", "persona_gate.models"]),
        (
            "persona_gate.plots",
            [
                "transformer_lens",
                "transformers",
                "persona_gate.core",
                "persona_gate.models",
                "persona_gate.experiments",
                "persona_gate.monitoring.monitor",
                "persona_gate.redteam.harness",
                "persona_gate.compare.checkpoints",
                "persona_gate.scoring.metrics",
            ],
        ),
    ],
)
def test_importing_does_not_load_the_model_stack(module, forbidden):
    probe = f"import sys, {module}; print([m for m in {forbidden!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing {module} loads {out}"


def test_the_tree_shows_the_architecture():
    entries = sorted(p.name for p in PKG.iterdir() if not p.name.startswith(("_", ".")) or p.name == "__init__.py")
    entries = [e for e in entries if e != "__pycache__"]
    assert 12 <= len(entries) <= 24, entries
    assert {e.removesuffix(".py") for e in entries} - {"__init__"} == set(LAYER)


def test_no_import_cycles_between_modules():
    """Not even through function-level imports: computing, rendering and saving stay apart."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target, names, _ in _imports(name, path):
            # "from pkg import mod" names a module when pkg.mod is one
            hits = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            deps.update(hits or ([target] if target in modules else []))
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}  # a package's own __init__
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    cycles = [c for c in cycles if "" not in c]  # the lazy root __init__ resolves names on use
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
