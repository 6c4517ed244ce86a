"""Fixtures for the export tests: tiny checkpoints and the ``[optimum]`` environment.

Tests marked ``optimum`` run Optimum's ONNX export, which needs transformers<4.58: either this
interpreter is that environment, or its interpreter is found (``HF_COMPRESS_OPTIMUM_PYTHON``, else
``.venv-optimum/bin/python``; ``scripts/setup_optimum_venv.sh`` creates it). When it is missing the
tests FAIL with that instruction — they are skipped only when ``HF_COMPRESS_SKIP_OPTIMUM=1`` says so.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SKIP_VAR = "HF_COMPRESS_SKIP_OPTIMUM"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "optimum: needs the [optimum] environment (optimum-onnx, transformers<4.58)"
    )


def in_optimum_env() -> bool:
    from hf_compress.export_optimum import optimum_problem

    return optimum_problem() is None


@pytest.fixture(scope="session")
def optimum_python() -> str:
    """``"in-process"`` or the [optimum] interpreter; fails (or skips on HF_COMPRESS_SKIP_OPTIMUM=1) without it."""
    from hf_compress.export import ExportConfig, optimum_interpreter

    python = optimum_interpreter(ExportConfig())
    if python is not None:
        return python
    message = (
        "the [optimum] environment is missing: run `bash scripts/setup_optimum_venv.sh` or set "
        "HF_COMPRESS_OPTIMUM_PYTHON to its python"
    )
    if os.environ.get(SKIP_VAR) == "1":
        pytest.skip(f"{SKIP_VAR}=1: {message}")
    pytest.fail(f"{message} (or set {SKIP_VAR}=1 to skip these tests explicitly)")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny Llama (9 q / 3 kv heads, RoPE base 1e5) + byte-level BPE tokenizer, saved by this transformers."""
    from tiny_models import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    """A tiny BertForSequenceClassification (2 labels) + tokenizer, saved portably."""
    import torch
    from tiny_models import tiny_tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    from hf_compress.portable import save_pretrained_portable

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        num_labels=2,
        pad_token_id=2,
    )
    model = BertForSequenceClassification(config).eval()
    return save_pretrained_portable(model, tokenizer, tmp_path_factory.mktemp("tiny") / "bert")
