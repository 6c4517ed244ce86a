"""Portable checkpoints: atomic folders, RoPE config for 4.57 + 5.x, tokenizer written verbatim.

The cross-version tests load the written folders in the transformers 4.57 environment through
``scripts/check_cross_version.py`` (interpreter: ``HF_COMPRESS_COMPAT_PYTHON``, default
``.venv457/bin/python`` in the repository). Without it they fail, unless
``HF_COMPRESS_SKIP_COMPAT=1``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from hf_compress.portable import (
    atomic_dir,
    make_config_portable,
    portable_tokenizer_files,
    save_pretrained_portable,
    save_tokenizer_portable,
    verify_tokenizer_roundtrip,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_cross_version.py"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Numbers like 12345 and 3.14 appear in text; so do commas, colons: and dashes - too.",
    "Language models predict the next token from the previous ones.",
    "Pruning removes weights; distillation teaches a small student from a large teacher.",
] * 20
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def load_script():
    spec = importlib.util.spec_from_file_location("check_cross_version", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compat_python() -> str:
    """The transformers 4.57 interpreter; fails (or skips with HF_COMPRESS_SKIP_COMPAT=1) if missing."""
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


def make_tokenizer(add_bos: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in-code; ``add_bos`` makes its post-processor prepend ``<s>``."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    single = "<s> $A" if add_bos else "$A"
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} $B:1", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_input_names=["input_ids", "attention_mask"],
    )


def make_llama(tokenizer, rope_theta: float, rope_scaling: dict | None) -> LlamaForCausalLM:
    """A tiny random Llama (4 query / 2 KV heads); weights large enough that RoPE changes logits."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


VARIANTS = {
    "default": dict(add_bos=False, rope_theta=50_000.0, rope_scaling=None),
    "linear_bos": dict(
        add_bos=True, rope_theta=20_000.0, rope_scaling={"rope_type": "linear", "factor": 2.0}
    ),
    "llama3": dict(
        add_bos=False,
        rope_theta=500_000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    "yarn": dict(
        add_bos=False,
        rope_theta=10_000.0,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    ),
}


# ----------------------------------------------------------------------------- config dicts


def test_config_default_rope_gets_top_level_theta():
    out = make_config_portable(
        {"model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": 1e5}}
    )
    assert out["rope_theta"] == 1e5
    assert out["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e5}
    assert out.get("rope_scaling") is None


def test_config_scaled_rope_gets_rope_scaling_without_theta():
    params = {
        "rope_type": "llama3",
        "rope_theta": 5e5,
        "factor": 8.0,
        "original_max_position_embeddings": 8192,
    }
    out = make_config_portable({"rope_parameters": params, "partial_rotary_factor": None})
    assert out["rope_theta"] == 5e5
    assert out["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 8192,
    }
    assert out["rope_parameters"] == params


def test_config_stale_rope_scaling_is_cleared():
    out = make_config_portable(
        {
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
            "rope_scaling": {"rope_type": "linear"},
        }
    )
    assert out["rope_scaling"] is None


def test_config_legacy_only_gets_rope_parameters():
    out = make_config_portable({"rope_theta": 2e4, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert out["rope_parameters"] == {"rope_type": "linear", "factor": 2.0, "rope_theta": 2e4}
    assert out["rope_theta"] == 2e4


def test_config_nested_and_per_layer_type():
    config = {
        "model_type": "gemma3",
        "text_config": {
            "model_type": "gemma3_text",
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        },
    }
    out = make_config_portable(config)
    text = out["text_config"]
    assert text["rope_theta"] == 1e6
    assert text["rope_local_base_freq"] == 1e4
    assert text["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    assert config["text_config"].get("rope_theta") is None  # input not mutated


def test_config_is_idempotent():
    once = make_config_portable({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}})
    assert make_config_portable(once) == once


# ----------------------------------------------------------------------------- atomic folders


def test_atomic_dir_publishes_only_on_success(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary leftovers
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir_refuses_existing_and_keeps_old_on_failure(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"), atomic_dir(target):
        pass
    with pytest.raises(ValueError), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise ValueError("failed run")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert list(tmp_path.iterdir()) == [target]


# ----------------------------------------------------------------------------- save_pretrained_portable


def test_save_portable_reloads_same_model(tmp_path):
    tok = make_tokenizer(add_bos=False)
    model = make_llama(tok, 50_000.0, None)
    path = save_pretrained_portable(model, tok, tmp_path / "ckpt", extra_files={"notes/report.json": "{}"})
    config = json.loads((path / "config.json").read_text())
    assert config["rope_theta"] == 50_000.0 and config["rope_parameters"]["rope_theta"] == 50_000.0
    assert (
        json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "PreTrainedTokenizerFast"
    )
    assert (path / "notes" / "report.json").read_text() == "{}"
    tok2 = AutoTokenizer.from_pretrained(path)
    model2 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tok(CORPUS[0], return_tensors="pt").input_ids
    assert ids[0, 0].item() != tok.bos_token_id
    assert torch.equal(tok2(CORPUS[0], return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)
    assert (
        tok2.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<s>user\nhi</s>\n"
    )
    assert list(tmp_path.iterdir()) == [path]


def test_save_portable_refuses_existing_before_writing(tmp_path):
    class NoSave:
        def save_pretrained(self, *args, **kwargs):
            raise AssertionError("must not start writing")

    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained_portable(NoSave(), None, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="relative path"):
        save_pretrained_portable(NoSave(), None, tmp_path / "other", extra_files={"../x": "y"})


def test_tokenizer_files_keep_bos_behaviour_and_reject_slow():
    for add_bos in (False, True):
        files = portable_tokenizer_files(make_tokenizer(add_bos))
        single = json.loads(files["tokenizer.json"])["post_processor"]["single"]
        assert any("SpecialToken" in piece for piece in single) == add_bos
    with pytest.raises(TypeError, match="slow tokenizer"):
        portable_tokenizer_files(object())


def test_verify_catches_a_tokenizer_that_changed(tmp_path):
    tok = make_tokenizer(add_bos=False)
    save_tokenizer_portable(tok, tmp_path)
    pipeline = json.loads((tmp_path / "tokenizer.json").read_text())
    pipeline["pre_tokenizer"] = {"type": "Whitespace"}  # drops the spaces, like the 4.57 -> 5.x GGUF trap
    (tmp_path / "tokenizer.json").write_text(json.dumps(pipeline))
    with pytest.raises(RuntimeError, match="encodes"):
        verify_tokenizer_roundtrip(tok, tmp_path)


# ----------------------------------------------------------------------------- across 4.57 and 5.x


@pytest.fixture(scope="module")
def cross_version(tmp_path_factory):
    """Checkpoints of every variant (+ a non-portable control) dumped here and under 4.57."""
    python = compat_python()
    root = tmp_path_factory.mktemp("xver")
    folders = {}
    for name, spec in VARIANTS.items():
        tok = make_tokenizer(spec["add_bos"])
        folders[name] = save_pretrained_portable(
            make_llama(tok, spec["rope_theta"], spec["rope_scaling"]), tok, root / name
        )
    tok = make_tokenizer(add_bos=False)  # control: plain 5.x save_pretrained config, portable tokenizer
    control = root / "plain_config"
    control.mkdir()
    make_llama(tok, 50_000.0, None).save_pretrained(control)
    save_tokenizer_portable(tok, control)
    folders["plain_config"] = control
    script = load_script()
    pairs = []
    for name, folder in folders.items():
        script.dump(str(folder), str(root / f"{name}.here.pt"), [], 0, 64)
        pairs += [str(folder), str(root / f"{name}.compat.pt")]
    proc = subprocess.run([python, str(SCRIPT), "dump", *pairs], capture_output=True, text=True)
    assert proc.returncode == 0, f"dump under {python} failed:\n{proc.stderr[-3000:]}"
    return script, root


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_portable_checkpoint_is_identical_in_457(cross_version, name):
    script, root = cross_version
    report = script.compare(str(root / f"{name}.here.pt"), str(root / f"{name}.compat.pt"), atol=1e-5)
    assert report["a"]["transformers"] != report["b"]["transformers"], (
        "compat interpreter runs the same version"
    )
    assert report["ids_equal"] and report["decoded_equal"] and report["chat_equal"], report
    assert report["special_equal"] and report["batch_equal"], report
    assert report["inv_freq_equal"], report
    assert report["max_abs_diff"] <= 1e-5, report
    assert report["ok"], report


def test_plain_config_differs_in_457(cross_version):
    """The control proves the check can fail: without the legacy rope_theta, 4.57 uses 10000."""
    script, root = cross_version
    report = script.compare(
        str(root / "plain_config.here.pt"), str(root / "plain_config.compat.pt"), atol=1e-5
    )
    assert report["ids_equal"]
    assert not report["inv_freq_equal"]
    assert report["max_abs_diff"] > 1e-3
    assert not report["ok"]


@pytest.mark.slow
def test_script_run_command(cross_version, capsys):
    """``run`` (the documented one-step form) dumps under two interpreters and exits 0 when equal."""
    script, root = cross_version
    code = script.main(
        ["run", str(root / "default"), "--python", sys.executable, "--python", compat_python()]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] and report["max_abs_diff"] <= 1e-5


def test_missing_compat_interpreter_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_COMPRESS_COMPAT_PYTHON", str(tmp_path / "no-python"))
    monkeypatch.delenv("HF_COMPRESS_SKIP_COMPAT", raising=False)
    with pytest.raises(pytest.fail.Exception, match="HF_COMPRESS_SKIP_COMPAT=1"):
        compat_python()
    monkeypatch.setenv("HF_COMPRESS_SKIP_COMPAT", "1")
    with pytest.raises(pytest.skip.Exception):
        compat_python()


def test_published_folder_gets_the_usual_permissions(tmp_path):
    from hf_compress.portable import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            secret = tmp / "model.safetensors"
            secret.write_bytes(b"x")
            secret.chmod(0o600)  # as some writers leave their files
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777 == 0o644
