"""Perplexity against a naive float64 computation on tiny models; size and latency helpers."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
)

from hf_compress.calibration import TokenizerRoundTripError, TooShortError, evaluation_windows
from hf_compress.evaluate import PerplexityResult, latency, model_size, perplexity, token_nll

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    f"Line {i}: the quick brown fox jumps over the lazy dog, and the {i % 7} cats sleep." for i in range(40)
]
VOCAB = 320


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    """A lossless byte-level BPE tokenizer trained on TEXTS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")


def _tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
    if kind == "llama":
        cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_key_value_heads=2, **common)
        model = LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128))
    elif kind == "opt":
        cfg = OPTConfig(hidden_size=64, ffn_dim=96, word_embed_proj_dim=32, **common)
        model = OPTForCausalLM(cfg)
    elif kind == "gemma2":  # a small soft-cap so that forgetting it would show
        cfg = Gemma2Config(hidden_size=64, intermediate_size=96, num_key_value_heads=2, head_dim=16, **common)
        cfg.final_logit_softcapping = 0.5
        model = Gemma2ForCausalLM(cfg)
    elif kind == "phi3":  # not in the architecture table: the full-logits path
        cfg = Phi3Config(
            hidden_size=64, intermediate_size=96, num_key_value_heads=2, pad_token_id=0, **common
        )
        model = Phi3ForCausalLM(cfg)
    else:
        raise AssertionError(kind)
    with torch.no_grad():  # make logits spread out so that mistakes show
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


def naive_ppl(model, windows: torch.Tensor, first_scored: int = 1) -> tuple[float, int]:
    """exp(mean NLL) from the full logits in float64, one window at a time."""
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logp = torch.log_softmax(model(input_ids=w[None]).logits[0].double(), dim=-1)
            targets = w[first_scored:]
            nll -= logp[first_scored - 1 : -1].gather(1, targets[:, None]).sum().item()
            n += targets.numel()
    return math.exp(nll / n), n


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt", "gemma2", "phi3"])
def test_perplexity_matches_naive_float64(tok, kind):
    model = _tiny(kind)
    result = perplexity(model, tok, TEXTS, seqlen=32, max_windows=5, progress=False)
    windows = evaluation_windows(tok, TEXTS, seqlen=32, max_windows=5)
    want, n = naive_ppl(model, windows)
    assert result.n_tokens == n == 5 * 31
    assert result.ppl == pytest.approx(want, rel=1e-5)
    assert result.nll == pytest.approx(math.log(want), rel=1e-5)
    assert result.ppl > 5  # random weights: far from a trivial value


def test_batch_and_chunk_size_do_not_change_the_result(tok):
    model = _tiny("llama")
    one = perplexity(model, tok, TEXTS, seqlen=24, max_windows=7, progress=False)
    many = perplexity(model, tok, TEXTS, seqlen=24, max_windows=7, batch_size=3, chunk_size=5, progress=False)
    assert many.ppl == pytest.approx(one.ppl, rel=1e-6) and many.n_tokens == one.n_tokens


def test_bos_is_never_scored(tok):
    model = _tiny("llama")
    result = perplexity(model, tok, TEXTS, seqlen=16, max_windows=4, add_bos=True, progress=False)
    windows = evaluation_windows(tok, TEXTS, seqlen=16, max_windows=4, add_bos=True)
    want, n = naive_ppl(model, windows, first_scored=1)
    assert (windows[:, 0] == tok.bos_token_id).all()
    assert result.n_tokens == n == 4 * 15 and result.ppl == pytest.approx(want, rel=1e-5)
    assert result.protocol.add_bos and "BOS added per window" in result.protocol.describe()


def test_overlapping_stride_scores_new_tokens_only(tok):
    model = _tiny("llama")
    result = perplexity(model, tok, TEXTS, seqlen=16, stride=8, max_windows=3, progress=False)
    windows = evaluation_windows(tok, TEXTS, seqlen=16, stride=8, max_windows=3)
    nll, n = 0.0, 0
    with torch.no_grad():
        for i, w in enumerate(windows):
            logp = torch.log_softmax(model(input_ids=w[None]).logits[0].double(), dim=-1)
            first = 1 if i == 0 else 8  # positions 1..7 of later windows were scored before
            nll -= logp[first - 1 : -1].gather(1, w[first:, None]).sum().item()
            n += 16 - first
    assert result.n_tokens == n == 15 + 8 + 8
    assert result.ppl == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_token_nll_ignores_masked_positions():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(2, 6, 8)
    labels = torch.randint(0, 11, (2, 6))
    labels[:, 0] = -100
    labels[1, 4:] = -100  # padding at the end of row 1
    total, n = token_nll(hidden, labels, head, chunk_size=3)
    assert n == 5 + 3 and total.dtype == torch.float64
    changed = hidden.clone()
    changed[1, 3:] = 1e3  # states that only predict padding
    changed[:, -1] = -1e3  # the last state predicts nothing
    assert torch.equal(token_nll(changed, labels, head, chunk_size=3)[0], total)
    logp = torch.log_softmax(head(hidden).double(), dim=-1)
    want = -sum(logp[b, p - 1, labels[b, p]] for b in range(2) for p in range(1, 6) if labels[b, p] != -100)
    assert total.item() == pytest.approx(want.item(), rel=1e-6)


def test_protocol_is_complete_and_serializable(tok):
    result = perplexity(_tiny("gpt2"), tok, TEXTS, seqlen=32, max_windows=2, progress=False)
    assert isinstance(result, PerplexityResult) and result.seconds > 0
    proto = result.protocol
    assert (proto.seqlen, proto.n_windows, proto.stride, proto.n_tokens) == (32, 2, 32, 62)
    assert proto.dtype == "float32" and proto.tokenizer_class == type(tok).__name__
    assert {"torch", "transformers"} <= set(proto.versions)
    line = proto.describe()
    for part in (
        "2 x 32-token windows",
        "stride 32 (non-overlapping)",
        "62 tokens scored",
        "no BOS",
        "float32",
    ):
        assert part in line
    assert json.loads(json.dumps(result.to_dict()))["protocol"]["seqlen"] == 32


def test_protocol_names_file_and_split(tok, tmp_path):
    (tmp_path / "eval.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    result = perplexity(_tiny("llama"), tok, tmp_path / "eval.txt", seqlen=32, max_windows=1, progress=False)
    assert result.protocol.source.endswith("eval.txt") and "eval.txt" in result.protocol.describe()


def test_errors_before_heavy_work(tok):
    with pytest.raises(ValueError, match="causal language model.*BertForMaskedLM"):
        perplexity(
            BertForMaskedLM(
                BertConfig(
                    vocab_size=VOCAB,
                    hidden_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=32,
                )
            ),
            tok,
            TEXTS,
        )
    model = _tiny("llama")
    with pytest.raises(ValueError, match="seqlen=256 exceeds the model's 128 positions"):
        perplexity(model, tok, TEXTS, seqlen=256)
    with pytest.raises(ValueError, match="batch_size=0"):
        perplexity(model, tok, TEXTS, seqlen=16, batch_size=0)
    with pytest.raises(TooShortError, match="needs 64"):
        perplexity(model, tok, ["tiny"], seqlen=64)


def test_refuses_broken_tokenizer(tok):
    words = {w for t in TEXTS for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(t)}
    broken = Tokenizer(
        models.WordLevel({w: i for i, w in enumerate(["[UNK]", *sorted(words)])}, unk_token="[UNK]")
    )
    broken.pre_tokenizer = pre_tokenizers.Whitespace()
    broken.decoder = decoders.Fuse()  # decoding drops every space
    broken_tok = PreTrainedTokenizerFast(tokenizer_object=broken, unk_token="[UNK]")
    with pytest.raises(TokenizerRoundTripError, match="thequickbrownfox|quickbrown"):
        perplexity(_tiny("llama"), broken_tok, TEXTS, seqlen=16, progress=False)


def test_model_size_for_model_and_checkpoint(tmp_path):
    model = _tiny("llama")  # tied embeddings: counted once
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, ::2] = 0.0
    size = model_size(model)
    total = sum(p.numel() for p in model.parameters())
    zeros = model.model.layers[0].mlp.down_proj.weight.numel() // 2
    assert size["parameters"] == total and size["nonzero_parameters"] == total - zeros
    assert size["sparsity"] == pytest.approx(zeros / total) and size["bytes_in_memory"] == 4 * total
    model.save_pretrained(tmp_path / "ckpt")
    disk = model_size(tmp_path / "ckpt")
    assert (disk["parameters"], disk["nonzero_parameters"]) == (
        size["parameters"],
        size["nonzero_parameters"],
    )
    assert disk["bytes_on_disk"] >= 4 * total
    with pytest.raises(FileNotFoundError, match="safetensors"):
        model_size(tmp_path)


def test_latency_reports_prefill_and_decode():
    model = _tiny("llama")
    report = latency(model, prompt_tokens=16, new_tokens=4, warmup=0, repeats=2)
    assert report["prefill_ms"] > 0 and report["decode_tokens_per_s"] > 0
    assert report["decode_ms_per_token"] == pytest.approx(4 / report["decode_tokens_per_s"] * 1e3 / 4)
    assert model.training is False
    with pytest.raises(ValueError, match="new_tokens=0"):
        latency(model, new_tokens=0)


# ------------------------------------------------------------------------------------ real model


@pytest.fixture(scope="module")
def smollm2_dir(request) -> Path:
    """SmolLM2 folder: ``HF_COMPRESS_SMOLLM2`` (e.g. /tmp/models/smollm2-135m-instruct) or the fetch fixture."""
    override = os.environ.get("HF_COMPRESS_SMOLLM2")
    return Path(override) if override else request.getfixturevalue("smollm2_path")


@pytest.mark.slow
def test_smollm2_agrees_with_independent_reference(smollm2_dir, shared_data):
    """Issue 2 item 4: within 0.1% of scripts/reference_ppl.py on 64 x 512 tokens of WikiText-2 test."""
    spec = importlib.util.spec_from_file_location("reference_ppl", ROOT / "scripts" / "reference_ppl.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    data = shared_data / "wikitext-2" / "test.txt"
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    want = reference.reference_perplexity(model, tokenizer, data.read_text(encoding="utf-8"), 512, 64)
    got = perplexity(model, tokenizer, data, seqlen=512, max_windows=64, progress=False)
    assert got.n_tokens == 64 * 511
    assert got.ppl == pytest.approx(want, rel=1e-3)
    assert 20 < got.ppl < 35  # NOTES: 26.15 on transformers 5.17
