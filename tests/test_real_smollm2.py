"""Slow: prune the real SmolLM2-135M-Instruct on real text (CI runs these)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_compress as hfc
from hf_compress.evaluate import perplexity

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path), smollm2_path


def _ppl(model, tok, data):
    return perplexity(model, tok, data / "wikitext-2" / "test.txt", seqlen=512, max_windows=8, progress=False).ppl


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_real_2of4_pruning_on_real_text(smollm2, shared_data, method):
    tok, path = smollm2
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    dense = _ppl(model, tok, shared_data)
    config = hfc.PrunerConfig(method=method, pattern="2:4", n_samples=16, seqlen=512)
    hfc.prune(model, config, dataset=shared_data / "wikitext-2" / "valid.txt", tokenizer=tok, progress=False)
    report = hfc.sparsity_report(model)
    # 2:4 zeros half of every group; weights that were already exactly 0 in the dense model may add a few
    assert report.pattern_holds("2:4") and 0.5 <= report.total < 0.5 + 1e-4
    assert model.hf_compress_report.cholesky_retries == 0
    pruned = _ppl(model, tok, shared_data)
    magnitude = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    hfc.prune(magnitude, hfc.PrunerConfig(method="magnitude", pattern="2:4"), progress=False)
    worst = _ppl(magnitude, tok, shared_data)
    # 2:4 costs a 135M model a lot; calibrated methods must still clearly beat magnitude
    assert dense < pruned < worst
    assert pruned < 0.5 * worst
