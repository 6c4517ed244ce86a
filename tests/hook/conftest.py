"""Fixtures for the from_pretrained hook tests: registration and tiny saved checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hf_compress import byte_planes
from hf_compress.integrations.transformers import register
from tests.tiny_models import save_tiny_causal_lm, tiny_gpt2, tiny_qwen2

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def _registered():
    """``import hf_compress`` registers the hook; call it explicitly so the tests do not depend on that."""
    register()


@pytest.fixture(autouse=True)
def _code_tiny_tensors(monkeypatch):
    """Byte-plane code tensors of tiny models too (the real threshold skips everything a tiny model has)."""
    monkeypatch.setattr(byte_planes, "MIN_NUMEL", 256)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny checkpoints: ``llama`` (with tokenizer), ``qwen2``, ``gpt2``."""
    root = tmp_path_factory.mktemp("tiny")
    paths = {"llama": save_tiny_causal_lm(root / "llama")}
    for name, factory in (("qwen2", tiny_qwen2), ("gpt2", tiny_gpt2)):
        factory().save_pretrained(root / name)
        paths[name] = root / name
    return paths


@pytest.fixture(scope="session")
def compat_python() -> str:
    """The transformers 4.57 interpreter (``HF_COMPRESS_COMPAT_PYTHON``, default ``.venv457``).

    Missing: the test fails, unless ``HF_COMPRESS_SKIP_COMPAT=1``.
    """
    python = os.environ.get("HF_COMPRESS_COMPAT_PYTHON", str(REPO / ".venv457" / "bin" / "python"))
    if not Path(python).is_file():
        message = f"transformers 4.57 interpreter not found at {python}; set HF_COMPRESS_COMPAT_PYTHON"
        if os.environ.get("HF_COMPRESS_SKIP_COMPAT") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return python
