"""Tiny tokenizers, models and datasets for the distillation tests (built from config, no Hub)."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

N_WORDS = 60


def make_tokenizer(prefix: str = "w", n_words: int = N_WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: <pad>=0, <eos>=1, <unk>=2, then ``{prefix}{i}``."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"{prefix}{i}": i + 3 for i in range(n_words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def make_llama(layers: int, hidden: int, vocab: int = 64, seed: int = 0, heads: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        head_dim=hidden // heads,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return LlamaForCausalLM(cfg).float()


def make_bert(layers: int, hidden: int = 32, seed: int = 0, vocab: int = 64) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return BertForSequenceClassification(cfg).float()


def token_rows(n: int, seed: int = 0, lo: int = 5, hi: int = 17) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 3 + N_WORDS) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def lm_dataset() -> Dataset:
    return Dataset.from_dict({"input_ids": token_rows(16)})


@pytest.fixture
def prompt_dataset() -> Dataset:
    rng = random.Random(1)
    rows = [
        {
            "prompt": " ".join(f"w{rng.randrange(N_WORDS)}" for _ in range(rng.randrange(2, 6))),
            "completion": " ".join(f"w{rng.randrange(N_WORDS)}" for _ in range(rng.randrange(2, 6))),
        }
        for _ in range(8)
    ]
    return Dataset.from_list(rows)


@pytest.fixture
def sst_like() -> Dataset:
    rng = random.Random(2)
    rows = []
    for _ in range(24):
        label = rng.randrange(2)
        words = [f"w{rng.randrange(30) + 30 * label}" for _ in range(rng.randrange(3, 9))]
        rows.append({"sentence": " ".join(words), "label": label})
    return Dataset.from_list(rows)


def base_args(tmp_path, **kw):
    from hf_compress.distill import DistillationConfig

    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    defaults.update(kw)
    return DistillationConfig(**defaults)
