"""Fixtures of the recovery tests: a tokenizer, real text, a tiny dense and a 2:4-pruned Llama."""

from __future__ import annotations

import copy

import pytest

from tests.recover.recover_utils import make_llama, prune_24
from tests.tiny_models import tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def text(shared_data) -> list[str]:
    return [(shared_data / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:12000]]


@pytest.fixture(scope="session")
def _dense(tokenizer):
    return make_llama(tokenizer)


@pytest.fixture
def dense(_dense):
    return copy.deepcopy(_dense)


@pytest.fixture
def pruned(_dense):
    return prune_24(copy.deepcopy(_dense))
