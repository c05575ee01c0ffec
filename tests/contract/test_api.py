"""The public API: every root name is the object it names, static tools see the same names, and
the tutorials use the root (and the curated ``persona_gate.plots``) only.

Every submodule is imported first: importing a submodule binds it on its package, which once
turned ``pg.provenance`` (a function) into the module ``persona_gate.provenance``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import persona_gate as pg

ROOT = Path(__file__).resolve().parents[2]
INIT = ROOT / "persona_gate" / "__init__.py"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Subpackages whose __init__ is a curated API (an explicit __all__) that tutorials may import from.
CURATED = {"persona_gate.plots"}


@pytest.fixture(scope="module")
def every_submodule():
    names = [m.name for m in pkgutil.walk_packages(pg.__path__, prefix="persona_gate.")]
    for name in names:
        importlib.import_module(name)
    return names


def test_every_root_name_is_the_object_it_names(every_submodule):
    assert "persona_gate.provenance" in every_submodule and "persona_gate.models.loading" in every_submodule
    wrong = []
    for name, module in pg._EXPORTS.items():
        want = getattr(importlib.import_module(f"persona_gate.{module}"), name)
        got = getattr(pg, name)
        if got is not want or isinstance(got, types.ModuleType):
            wrong.append(f"pg.{name} is {got!r}, not {module}.{name}")
    for name, module in pg._SUBMODULES.items():
        if getattr(pg, name) is not importlib.import_module(f"persona_gate.{module}"):
            wrong.append(f"pg.{name} is not the module persona_gate.{module}")
    assert not wrong, "\n".join(wrong)
    assert callable(pg.provenance)
    assert set(pg.__all__) == set(pg._EXPORTS) | set(pg._SUBMODULES) | {"__version__"}
    assert not set(pg._EXPORTS) & set(pg._SUBMODULES)


def test_a_submodule_import_cannot_shadow_a_root_name():
    probe = "import persona_gate as pg, persona_gate.provenance; print(callable(pg.provenance))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True"


def _is_module(relative: str) -> bool:
    try:
        return importlib.util.find_spec(f"persona_gate.{relative}") is not None
    except ModuleNotFoundError:  # the parent is a module, not a package
        return False


def _type_checking_imports() -> dict[str, str]:
    """``{bound name: module relative to persona_gate}`` of the ``if TYPE_CHECKING:`` block of ``__init__``."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    blocks = [
        n for n in tree.body if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"
    ]
    assert len(blocks) == 1, "persona_gate/__init__.py needs one `if TYPE_CHECKING:` block mirroring _EXPORTS"
    out: dict[str, str] = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.dump(node)
        for alias in node.names:
            bound = alias.asname or alias.name
            assert bound not in out, f"{bound} imported twice"
            full = ".".join(filter(None, [node.module, alias.name]))
            if _is_module(full):  # "from . import plots", "from .scoring import stats": a submodule
                out[bound] = full
            else:  # a name, bound as itself (the lazy table resolves it by that name)
                assert bound == alias.name, f"{alias.name} as {bound}: a root name keeps its name"
                out[bound] = node.module
    return out


def test_the_type_checking_block_mirrors_the_export_table():
    static = _type_checking_imports()
    lazy = {**pg._EXPORTS, **pg._SUBMODULES}
    missing = sorted(set(lazy) - set(static))
    extra = sorted(set(static) - set(lazy))
    assert not missing and not extra, f"add to the TYPE_CHECKING block: {missing}; not in _EXPORTS/_SUBMODULES: {extra}"
    differ = {n: (static[n], lazy[n]) for n in lazy if static[n] != lazy[n]}
    assert not differ, f"TYPE_CHECKING imports these from another module than the table: {differ}"


def test_importing_the_root_stays_free_of_torch():
    probe = "import sys, persona_gate; print([m for m in ('torch', 'transformer_lens') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def _notebook_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(cell, module, names)`` of every persona_gate import in the notebook's code cells."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "persona_gate":
                out.append((i, node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                out += [(i, a.name, []) for a in node.names if a.name.split(".")[0] == "persona_gate"]
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_import_the_root_only(path):
    assert NOTEBOOKS
    bad = []
    for cell, module, names in _notebook_imports(path):
        if module == "persona_gate":
            bad += [f"cell {cell}: pg.{n} is not a root name" for n in names if n not in pg.__all__]
        elif module in CURATED:
            curated = importlib.import_module(module).__all__
            bad += [f"cell {cell}: {module}.{n} is not in its __all__" for n in names if n not in curated]
        else:
            bad.append(f"cell {cell}: imports {module}; use `import persona_gate as pg` (or {sorted(CURATED)})")
    assert not bad, "\n".join(bad)


def test_the_notebook_check_can_fail(tmp_path):
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "source": ["import persona_gate as pg\n", "from persona_gate.core.interventions import apply\n"],
            }
        ]
    }
    (tmp_path / "x.ipynb").write_text(json.dumps(nb))
    assert [m for _, m, _ in _notebook_imports(tmp_path / "x.ipynb")] == [
        "persona_gate",
        "persona_gate.core.interventions",
    ]
