"""Shared by the distributed worker and the test: the same model, windows and cases."""

from tests.tiny_models import random_tokens, tiny_llama

CASES = [("sparsegpt", "unstructured"), ("sparsegpt", "2:4"), ("wanda", "unstructured"), ("wanda", "2:4")]


def fresh_model():
    return tiny_llama(seed=0, layers=2)


def calibration():
    return random_tokens(8, 16, seed=11)
