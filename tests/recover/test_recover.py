"""recover_with_lora on tiny models: LM loss, KD, adapter mode, masks kept, bad input refused before training."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel

from hf_compress import recover as recover_module
from hf_compress.calibration import NoTextError
from hf_compress.distill import TokenizerMismatchError
from hf_compress.recover import RecoveryConfig, lora_targets, recover_with_lora, recovery_dataset
from hf_compress.sparsity import sparsity_report
from tests.recover.recover_utils import make_gpt2, make_llama, prune_24, zeros
from tests.tiny_models import tiny_tokenizer

FAST = dict(max_steps=3, seqlen=32, batch_size=2, learning_rate=5e-3, logging_steps=1)


def _changed(a, b) -> int:
    pb = dict(b.named_parameters())
    return sum(int((p != pb[n]).sum()) for n, p in a.named_parameters())


def test_lm_recovery_keeps_every_zero_and_the_2of4_pattern(pruned, tokenizer, text):
    start = copy.deepcopy(pruned)
    before = zeros(pruned)
    out = recover_with_lora(pruned, text, tokenizer=tokenizer, config=RecoveryConfig(**FAST), progress=False)
    assert out is pruned  # merged in place, plain transformers model back
    assert not any("lora" in n for n, _ in out.named_parameters())
    after = zeros(out)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert _changed(out, start) > 0
    report = out.hf_compress_recovery
    assert report.masked_update and report.steps == 3 and report.targets == 14
    assert report.zeros_lost == 0 and report.patterns_after["2:4"]
    assert report.sparsity_after == report.sparsity_before == pytest.approx(0.5)
    assert [s for s, _ in report.losses] == [1, 2, 3] and all(
        torch.isfinite(torch.tensor([v for _, v in report.losses]))
    )
    assert sparsity_report(out).pattern_holds("2:4")


def test_kd_recovery_from_the_dense_teacher(pruned, dense, tokenizer, text):
    teacher_before = {n: p.clone() for n, p in dense.state_dict().items()}
    before = zeros(pruned)
    config = RecoveryConfig(loss="kd", temperature=2.0, kd_alpha=0.25, **FAST)
    out = recover_with_lora(
        pruned, text, dense, tokenizer=tokenizer, teacher_tokenizer=tokenizer, config=config, progress=False
    )
    assert all(torch.equal(before[n], zeros(out)[n]) for n in before)
    assert out.hf_compress_recovery.steps == 3
    assert all(torch.equal(teacher_before[n], p) for n, p in dense.state_dict().items())


def test_kd_lowers_the_divergence_to_the_teacher(pruned, dense, tokenizer, text):
    ids = recovery_dataset(tokenizer, text, seqlen=32)["input_ids"][:4]
    ids = torch.tensor(ids)

    def kl(model):
        with torch.no_grad():
            t = torch.log_softmax(dense(input_ids=ids).logits, -1)
            s = torch.log_softmax(model(input_ids=ids).logits, -1)
        return float((t.exp() * (t - s)).sum(-1).mean())

    before = kl(pruned)
    config = RecoveryConfig(loss="kd", max_windows=4, **(FAST | {"max_steps": 8, "learning_rate": 1e-3}))
    out = recover_with_lora(
        pruned, text, dense, tokenizer=tokenizer, teacher_tokenizer=tokenizer, config=config, progress=False
    )
    assert kl(out) < before


def test_adapter_mode_returns_peft_model_and_leaves_base_weights(pruned, tokenizer, text):
    start = copy.deepcopy(pruned)
    out = recover_with_lora(
        pruned, text, tokenizer=tokenizer, config=RecoveryConfig(merge=False, **FAST), progress=False
    )
    assert isinstance(out, PeftModel)
    assert not out.hf_compress_recovery.masked_update  # PEFT applies a released adapter densely
    base = {
        n.replace("base_layer.", ""): p
        for n, p in out.get_base_model().named_parameters()
        if "lora_" not in n
    }
    assert all(torch.equal(base[n], p) for n, p in start.named_parameters())


@pytest.mark.parametrize("uniform", [True, False])
def test_structured_pruned_models_recover_with_plain_lora(tokenizer, text, uniform):
    from hf_compress.structured import StructuredConfig, prune_structured

    small = make_llama(tokenizer)
    config = StructuredConfig(sparsity=0.25, uniform=uniform, importance="magnitude_l1")
    prune_structured(small, config, progress=False)
    shapes = [tuple(layer.mlp.up_proj.weight.shape) for layer in small.model.layers]
    assert all(s[0] < 96 for s in shapes) and (uniform == (len(set(shapes)) == 1))
    start = copy.deepcopy(small)
    out = recover_with_lora(small, text, tokenizer=tokenizer, config=RecoveryConfig(**FAST), progress=False)
    assert not out.hf_compress_recovery.masked_update  # dense weights: plain LoRA, then merged
    assert [tuple(layer.mlp.up_proj.weight.shape) for layer in out.model.layers] == shapes
    assert _changed(out, start) > 0


def test_gpt2_conv1d_recovery(tokenizer, text):
    model = prune_24(make_gpt2(tokenizer))
    before = zeros(model)
    out = recover_with_lora(model, text, tokenizer=tokenizer, config=RecoveryConfig(**FAST), progress=False)
    assert all(torch.equal(before[n], zeros(out)[n]) for n in before)
    assert out.hf_compress_recovery.targets == 8


def test_target_regexes_and_default_targets(pruned):
    names = lora_targets(pruned)
    assert len(names) == 14 and all(".layers." in n for n in names)
    assert lora_targets(pruned, [r"mlp\.(up|down)_proj"], [r"layers\.1\."]) == [
        "model.layers.0.mlp.down_proj",
        "model.layers.0.mlp.up_proj",
    ]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a trainer is ever built: bad input must be refused before training."""

    def refuse(*args, **kwargs):
        raise AssertionError("a trainer was built for bad input")

    monkeypatch.setattr(recover_module, "_build_trainer", refuse)


@pytest.mark.parametrize("data", [[""], ["  \n\n  "], []])
def test_no_usable_text_is_refused_before_training(pruned, tokenizer, data, no_training):
    with pytest.raises(NoTextError, match="no usable text"):
        recover_with_lora(pruned, data, tokenizer=tokenizer, config=RecoveryConfig(**FAST), progress=False)


def test_empty_file_is_refused(pruned, tokenizer, tmp_path, no_training):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(NoTextError):
        recover_with_lora(
            pruned, str(empty), tokenizer=tokenizer, config=RecoveryConfig(**FAST), progress=False
        )


def test_target_matching_nothing_is_refused(pruned, tokenizer, text, no_training):
    before = {n: p.clone() for n, p in pruned.named_parameters()}
    with pytest.raises(ValueError, match=r"LoRA targets=\['nope'\].*match no linear layer"):
        recover_with_lora(
            pruned, text, tokenizer=tokenizer, config=RecoveryConfig(targets=["nope"], **FAST), progress=False
        )
    assert {n for n, _ in pruned.named_parameters()} == set(before)  # not wrapped by PEFT


def test_lm_head_is_not_a_target(pruned, tokenizer, text, no_training):
    with pytest.raises(ValueError, match="match no linear layer"):
        recover_with_lora(
            pruned,
            text,
            tokenizer=tokenizer,
            config=RecoveryConfig(targets=["lm_head"], **FAST),
            progress=False,
        )


def test_teacher_with_another_tokenizer_is_refused(pruned, dense, tokenizer, text, no_training):
    other = tiny_tokenizer(vocab_size=280)
    config = RecoveryConfig(loss="kd", **FAST)
    with pytest.raises(TokenizerMismatchError, match="tokenizers differ"):
        recover_with_lora(
            pruned, text, dense, tokenizer=tokenizer, teacher_tokenizer=other, config=config, progress=False
        )


def test_teacher_with_a_narrower_head_is_refused(pruned, tokenizer, text, no_training):
    from transformers import LlamaConfig, LlamaForCausalLM

    narrow = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=16))  # fmt: skip
    with pytest.raises(TokenizerMismatchError, match="100 rows"):
        recover_with_lora(
            pruned,
            text,
            narrow,
            tokenizer=tokenizer,
            config=RecoveryConfig(loss="kd", **FAST),
            progress=False,
        )


def test_kd_without_teacher_and_resume_without_output_dir_are_refused(pruned, tokenizer, text, no_training):
    with pytest.raises(ValueError, match="needs teacher"):
        recover_with_lora(pruned, text, tokenizer=tokenizer, config=RecoveryConfig(loss="kd"), progress=False)
    with pytest.raises(ValueError, match="need output_dir"):
        recover_with_lora(
            pruned, text, tokenizer=tokenizer, config=RecoveryConfig(resume=True), progress=False
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "mse"}, r"loss='mse'.*lm, kd"),
        ({"rank": 0}, r"rank=0.*integer >= 1"),
        ({"lora_dropout": 1.0}, r"lora_dropout=1.0"),
        ({"masked_update": "sometimes"}, r"masked_update='sometimes'.*auto, masked, dense"),
        ({"masked_update": "masked", "merge": False}, r"masked_update='masked'"),
        ({"kd_loss": "l2"}, r"kd_loss='l2'.*forward_kl"),
        ({"targets": ["("]}, r"targets='\('"),
        ({"training_args": {"max_steps": 3}}, r"training_args='max_steps'"),
        ({"training_args": {"no_such_flag": 1}}, r"training_args='no_such_flag'.*SFTConfig"),
        ({"clock": "cpu"}, r"clock='cpu'.*wall, process"),
        ({"max_seconds": 0}, r"max_seconds=0"),
    ],
)
def test_config_errors_name_field_value_and_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RecoveryConfig(**kwargs)


def test_time_budget_stops_training(pruned, tokenizer, text):
    config = RecoveryConfig(**(FAST | {"max_steps": 50}), max_seconds=1e-6, clock="wall")
    out = recover_with_lora(pruned, text, tokenizer=tokenizer, config=config, progress=False)
    assert out.hf_compress_recovery.stopped_by_budget and out.hf_compress_recovery.steps == 1


def test_recovery_dataset_packs_non_overlapping_windows(tokenizer, text):
    from hf_compress.calibration import tokenize_stream

    ds = recovery_dataset(tokenizer, text, seqlen=32, max_windows=5)
    stream = tokenize_stream(tokenizer, text)
    assert len(ds) == 5 and all(len(r) == 32 for r in ds["input_ids"])
    assert ds["input_ids"][1] == stream[32:64].tolist()
    assert recovery_dataset(tokenizer, ds) is ds  # pre-tokenized data is used as given
