"""Helpers of the recovery tests: tiny models built from config, pruning, zero masks."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import hf_compress as hfc


def make_llama(tokenizer, seed: int = 0, ffn: int = 96) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=ffn, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def make_gpt2(tokenizer, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                     bos_token_id=0, eos_token_id=1, pad_token_id=2)  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


def prune_24(model):
    return hfc.prune(model, hfc.PrunerConfig(method="magnitude", pattern="2:4"), progress=False)


def zeros(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() == 0 for n, p in model.named_parameters()}
