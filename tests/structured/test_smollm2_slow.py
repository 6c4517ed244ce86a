"""SmolLM2-135M-Instruct, 25% of decoder parameters removed (uniform): plain reload, same logits, generate."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_compress.portable import save_pretrained_portable
from hf_compress.structured import StructuredConfig, prune_structured


@pytest.mark.slow
def test_smollm2_quarter_removed_reloads_plain(smollm2_path, shared_data, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    config = StructuredConfig(
        targets="heads,ffn", sparsity=0.25, importance="activation", n_samples=4, seqlen=256, round_to=8
    )
    prune_structured(
        model,
        config,
        dataset=str(shared_data / "wikitext-2" / "valid.txt"),
        tokenizer=tokenizer,
        progress=False,
    )
    report = model.hf_compress_report
    assert report.plain_config and report.uniform
    assert 0.24 <= report.removed_decoder_fraction <= 0.26
    assert report.after["heads"] == 6 and report.after["kv_heads"] == 3 and report.after["ffn"] % 8 == 0
    path = save_pretrained_portable(model, tokenizer, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert reloaded.config.head_dim == 64 and reloaded.config.num_attention_heads == 6
    ids = tokenizer(
        (shared_data / "wikitext-2" / "test.txt").read_text()[:4000], return_tensors="pt"
    ).input_ids[:, :256]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    prompt = ids[:, :32]
    out = reloaded.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    with torch.no_grad():
        full = reloaded(out, use_cache=False).logits[0, 31:-1].argmax(-1)
    assert torch.equal(full, out[0, 32:])
