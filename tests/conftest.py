"""Shared fixtures: the real data folder and the real models (fetched from PyPI, cached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder (``HF_COMPRESS_DATA`` or ``../shared/data``)."""
    path = Path(os.environ.get("HF_COMPRESS_DATA", _DEFAULT_DATA))
    if not (path / "wikitext-2" / "test.txt").is_file():
        pytest.fail(f"real data not found at {path}; set HF_COMPRESS_DATA")
    return path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as a plain safetensors folder (materialized once per cache)."""
    from hf_compress.fetch import fetch_model

    return fetch_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as a plain safetensors folder."""
    from hf_compress.fetch import fetch_model

    return fetch_model("all-minilm-l6-v2")
