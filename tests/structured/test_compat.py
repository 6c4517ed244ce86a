"""Uniformly pruned checkpoints load with plain ``from_pretrained`` under transformers 4.57 too.

The 4.57 interpreter is ``HF_COMPRESS_COMPAT_PYTHON`` (default ``.venv457/bin/python`` in the
repository); without it these tests fail, unless ``HF_COMPRESS_SKIP_COMPAT=1``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hf_compress.portable import save_pretrained_portable
from hf_compress.structured import StructuredConfig, prune_structured
from tests.tiny_models import tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "check_cross_version.py"


def compat_python() -> str:
    python = os.environ.get("HF_COMPRESS_COMPAT_PYTHON", str(REPO / ".venv457" / "bin" / "python"))
    if not Path(python).is_file():
        message = (
            f"transformers 4.57 interpreter not found at {python}: create that venv (torch, transformers==4.57.*, "
            "safetensors, accelerate) or set HF_COMPRESS_COMPAT_PYTHON; HF_COMPRESS_SKIP_COMPAT=1 skips this check"
        )
        if os.environ.get("HF_COMPRESS_SKIP_COMPAT") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return python


def load_script():
    spec = importlib.util.spec_from_file_location("check_cross_version", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def llama(tokenizer):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=72,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=8,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def gpt2(tokenizer):
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=3,
        n_head=4,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=1,
    )
    return GPT2LMHeadModel(cfg).eval()


CASES = {
    "llama": (llama, dict(keep_heads=4, keep_kv_heads=2, keep_hidden=36, keep_ffn=40, keep_layers=2)),
    "gpt2": (gpt2, dict(targets="heads,hidden,ffn", sparsity=0.3)),
}


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    python = compat_python()
    root = tmp_path_factory.mktemp("structured_xver")
    script = load_script()
    tokenizer = tiny_tokenizer()
    folders, models = {}, {}
    for name, (build, settings) in CASES.items():
        model = build(tokenizer)
        prune_structured(model, StructuredConfig(importance="magnitude_l1", **settings), progress=False)
        assert model.hf_compress_report.plain_config
        folders[name] = save_pretrained_portable(model, tokenizer, root / name)
        models[name] = model
    pairs = []
    for name, folder in folders.items():
        script.dump(str(folder), str(root / f"{name}.here.pt"), [], 0, 64)
        pairs += [str(folder), str(root / f"{name}.compat.pt")]
    proc = subprocess.run([python, str(SCRIPT), "dump", *pairs], capture_output=True, text=True)
    assert proc.returncode == 0, f"dump under {python} failed:\n{proc.stderr[-3000:]}"
    return script, root, folders, models, tokenizer


@pytest.mark.parametrize("name", sorted(CASES))
def test_pruned_checkpoint_identical_in_457(dumps, name):
    script, root, folders, models, tokenizer = dumps
    report = script.compare(str(root / f"{name}.here.pt"), str(root / f"{name}.compat.pt"), atol=1e-5)
    assert report["a"]["transformers"] != report["b"]["transformers"]
    assert report["ids_equal"] and report["max_abs_diff"] <= 1e-5, report
    here = torch.load(root / f"{name}.here.pt", weights_only=False)
    models[name].set_attn_implementation("eager")  # as the dumps load it
    with torch.no_grad():  # the reloaded model computes what the in-memory pruned model computes
        for ids, out in zip(here["ids"], here["outputs"], strict=True):
            x = torch.tensor([ids[:64]])
            if here["kind"] == "logits":
                memory = models[name](input_ids=x).logits[0]
            else:  # the script loads GPT2LMHeadModel checkpoints with AutoModel
                memory = models[name].base_model(input_ids=x).last_hidden_state[0]
            assert torch.equal(memory, out)
    config = json.loads((folders[name] / "config.json").read_text())
    if name == "llama":
        assert config["head_dim"] == 8 and config["hidden_size"] == 36 and config["num_key_value_heads"] == 2
        assert config["rope_theta"] == 100000.0
