"""Reference logits: recorded in one environment, checked in another (here: the same one, then broken)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama, tiny_tokenizer

from hf_compress.reference_logits import (
    REFERENCE_FILE,
    ReferenceMismatchError,
    check_reference,
    write_reference,
)


@pytest.fixture
def model_and_tokenizer():
    tokenizer = tiny_tokenizer()
    model = tiny_llama()
    model.resize_token_embeddings(len(tokenizer))
    return model.eval(), tokenizer


def test_the_same_model_passes(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    path = write_reference(model, tokenizer, tmp_path)
    assert path.name == REFERENCE_FILE and path.stat().st_size < 200_000
    check = check_reference(model, tokenizer, tmp_path)
    assert check.ok and check.max_abs_diff == 0.0 and check.argmax_agreement == 1.0


def test_a_different_rope_base_is_caught(tmp_path, model_and_tokenizer):
    """What 4.57 does to a 5.x config without top-level rope_theta: RoPE base 10000 instead of 1e5."""
    model, tokenizer = model_and_tokenizer
    write_reference(model, tokenizer, tmp_path)
    rotary = model.model.rotary_emb
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
    rotary.inv_freq.copy_(inv_freq)
    rotary.original_inv_freq = inv_freq
    with pytest.raises(ReferenceMismatchError, match="does not load as the same model"):
        check_reference(model, tokenizer, tmp_path)


def test_a_different_tokenizer_is_caught(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    write_reference(model, tokenizer, tmp_path)
    other = tiny_tokenizer(vocab_size=280)
    check = check_reference(model, other, tmp_path / REFERENCE_FILE, raise_on_mismatch=False)
    assert not check.ids_equal and not check.ok
