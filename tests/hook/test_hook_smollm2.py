"""Slow: the from_pretrained hook on the real SmolLM2-135M-Instruct.

2:4 SparseGPT at load (8 x 256 calibration tokens from WikiText-2 valid), compact saves in fp32 and
bf16 against dense saves of the same weights, exact reload, a Trainer step and a PEFT LoRA step after
loading, the loud failure without ``import hf_compress``, and a heterogeneous structured model (per-layer
heads, KV heads and FFN widths, two blocks dropped, 50 % unstructured sparsity) round trip.
``scripts/compact_sizes.py`` measures the same sizes for 50 % unstructured SparseGPT.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

import hf_compress
from hf_compress.integrations.transformers import MARKER_KEY, attach_quantizer
from hf_compress.models import surgery

pytestmark = pytest.mark.slow
_ITEM = {"F32": 4, "BF16": 2, "U8": 1}
TEXT = "The tower is 324 metres tall, about the same height as an 81-storey building."


def size(folder, blocks_only: bool = False) -> int:
    """Bytes of the safetensors files, or (``blocks_only``) of the tensors inside the decoder blocks."""
    if not blocks_only:
        return sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            names = f.keys()  # safe_open handles are not iterable
            for key in names:
                if ".layers." in key:
                    piece = f.get_slice(key)
                    total += math.prod(piece.get_shape()) * _ITEM[piece.get_dtype()]
    return total


@pytest.fixture(scope="module")
def pruned(smollm2_path, shared_data, tmp_path_factory):
    """``(model, tokenizer, folder)``: pruned at load, saved compact and dense in fp32 and bf16."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    config = hf_compress.PrunerConfig(
        method="sparsegpt", pattern="2:4", n_samples=8, seqlen=256,
        dataset=shared_data / "wikitext-2" / "valid.txt", tokenizer=tokenizer,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(
        smollm2_path, quantization_config=config, dtype=torch.float32
    )
    root = tmp_path_factory.mktemp("smollm2")
    model.save_pretrained(root / "compact32")
    model.config.quantization_config.compact = False
    model.save_pretrained(root / "dense32")
    bf16 = AutoModelForCausalLM.from_pretrained(root / "compact32", dtype=torch.bfloat16)
    bf16.save_pretrained(root / "compact16")
    bf16.config.quantization_config.compact = False
    bf16.save_pretrained(root / "dense16")
    model.config.quantization_config.compact = True
    return model, tokenizer, root


def test_2of4_at_load_is_recorded(pruned):
    model, _, root = pruned
    assert hf_compress.sparsity_report(model).pattern_holds("2:4")
    record = json.loads((root / "compact32" / "config.json").read_text())["quantization_config"]
    assert record["pruning"]["method"] == "sparsegpt" and record["sparsity"] == pytest.approx(0.5)
    assert len(record["modules"]) == 30 * 7 and set(record["modules"].values()) == {"2:4"}


@pytest.mark.parametrize("bits", [32, 16])
def test_compact_checkpoint_sizes(pruned, bits):
    _, _, root = pruned
    dense, compact = root / f"dense{bits}", root / f"compact{bits}"
    blocks = size(dense, blocks_only=True) / size(compact, blocks_only=True)
    whole = size(dense) / size(compact)
    print(
        f"\nSmolLM2-135M 2:4 {'fp32' if bits == 32 else 'bf16'}: file {size(dense):,} -> {size(compact):,} B "
        f"({whole:.3f}x); decoder blocks {size(dense, True):,} -> {size(compact, True):,} B ({blocks:.3f}x)"
    )
    # 21 % of SmolLM2's parameters are the tied embedding, never pruned: without byte-plane coding the
    # whole file would be only 1.587x (fp32) / 1.527x (bf16) smaller; the coding (lossless) closes that
    assert blocks >= 2.0 and whole >= 1.6


def test_reload_is_exact_and_trains(pruned, tmp_path):
    model, tokenizer, root = pruned
    reloaded = AutoModelForCausalLM.from_pretrained(root / "compact32")
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert (reloaded(ids).logits - model(ids).logits).abs().max().item() == 0.0
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    half = AutoModelForCausalLM.from_pretrained(root / "compact16", dtype=torch.bfloat16)
    again = AutoModelForCausalLM.from_pretrained(root / "dense16", dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(half(ids).logits, again(ids).logits)
    assert all(
        torch.equal(a, b)
        for a, b in zip(half.state_dict().values(), again.state_dict().values(), strict=True)
    )
    before = reloaded.model.layers[0].mlp.down_proj.weight.detach().clone()
    loss = train_one_step(reloaded, ids, tmp_path)
    print(f"\nTrainer step on the reloaded 2:4 SmolLM2-135M: loss {loss:.4f}")
    assert math.isfinite(loss)
    assert not torch.equal(before, reloaded.model.layers[0].mlp.down_proj.weight)


def train_one_step(model, ids, tmp_path) -> float:
    data = [{"input_ids": ids[0], "labels": ids[0]}] * 2
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=1, learning_rate=1e-4,
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    return Trainer(model=model, args=args, train_dataset=data).train().training_loss


def test_peft_lora_after_load(pruned, tmp_path):
    _, tokenizer, root = pruned
    model = AutoModelForCausalLM.from_pretrained(root / "compact32")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    lora = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    loss = train_one_step(peft_model, tokenizer(TEXT, return_tensors="pt").input_ids, tmp_path)
    print(f"\nPEFT LoRA step on the reloaded 2:4 SmolLM2-135M: loss {loss:.4f}")
    after = dict(peft_model.named_parameters())
    assert math.isfinite(loss) and any(not torch.equal(value, after[name]) for name, value in lora.items())


def test_plain_transformers_refuses_the_compact_checkpoint(pruned):
    _, _, root = pruned
    code = textwrap.dedent(
        """
        import sys
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained(sys.argv[1])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root / "compact32")], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "pip install hf-compress" in proc.stderr and "import hf_compress" in proc.stderr


def test_heterogeneous_structured_round_trip(smollm2_path, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    surgery.prune_heads(model, {3: [0, 1, 2, 3, 4, 5], 10: [6, 7, 8]})  # drop one / two of three KV groups
    surgery.prune_ffn(model, {i: list(range(512 + 32 * i)) for i in range(0, 30, 3)})
    surgery.drop_layers(model, [i for i in range(30) if i not in (20, 25)])
    pruner = hf_compress.PrunerConfig(method="magnitude", sparsity=0.5)
    hf_compress.prune(model, pruner, progress=False)
    attach_quantizer(model, pruner).save_pretrained(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "config.json").read_text())
    assert MARKER_KEY in record and record["quantization_config"]["layers"][3]["num_kv_heads"] == 2
    assert record["num_hidden_layers"] == 28 and set(record["quantization_config"]["modules"].values()) == {
        "bitmask"
    }
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert surgery.layer_shapes(reloaded) == surgery.layer_shapes(model)
    ids = AutoTokenizer.from_pretrained(smollm2_path)(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert (reloaded(ids).logits - model(ids).logits).abs().max().item() == 0.0
    kwargs = {"max_new_tokens": 8, "do_sample": False}
    cached = reloaded.generate(ids, use_cache=True, **kwargs)
    assert torch.equal(model.generate(ids, use_cache=True, **kwargs), cached)
    assert torch.equal(reloaded.generate(ids, use_cache=False, **kwargs), cached)
