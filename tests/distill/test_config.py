"""DistillationConfig validation and command-line parsing."""

from __future__ import annotations

import pytest
from transformers import HfArgumentParser

from hf_compress.distill import DistillationConfig
from hf_compress.distill.distillation_config import parse_layer_pairs

BASE = {"output_dir": "/tmp/unused", "bf16": False, "use_cpu": True, "report_to": []}


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("loss", "kl", "forward_kl"),
        ("temperature", 0.0, "> 0"),
        ("alpha", 1.5, "[0, 1]"),
        ("beta", -0.1, "[0, 1]"),
        ("lmbda", 2.0, "[0, 1]"),
        ("skew_alpha", 1.0, "[0, 1)"),
        ("feature_loss", "l1", "mse, cosine"),
        ("attention_loss", "ce", "kl, mse"),
        ("contrastive_temperature", -1.0, "> 0"),
        ("contrastive_pooling", "max", "mean, first, last"),
        ("top_k", 0, ">= 1"),
        ("feature_weight", -1.0, ">= 0"),
        ("teacher_dtype", "int8", "bfloat16"),
        ("feature_layers", "0-1", "pairs"),
    ],
)
def test_bad_values_name_the_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError) as err:
        DistillationConfig(**BASE, **{field: value})
    message = str(err.value)
    assert f"DistillationConfig.{field}={value!r}" in message and allowed in message


def test_defaults_and_kd_weight():
    cfg = DistillationConfig(**BASE, temperature=2.0, alpha=0.25)
    assert cfg.loss == "forward_kl" and cfg.feature_layers == "uniform"
    assert cfg.kd_weight == pytest.approx(0.75 * 4)
    assert DistillationConfig(**BASE, temperature=2.0, temperature_squared=False).kd_weight == pytest.approx(
        1.0
    )


@pytest.mark.parametrize("value", ["0:1,1:3", ["0:1", "1:3"], [[0, 1], [1, 3]], [(0, 1), (1, 3)]])
def test_layer_pairs_forms(value):
    assert parse_layer_pairs(value) == [(0, 1), (1, 3)]


def test_command_line_parsing():
    parser = HfArgumentParser(DistillationConfig)
    (cfg,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir", "/tmp/unused", "--bf16", "false", "--use_cpu", "true",
            "--loss", "jsd", "--beta", "0.2", "--temperature", "2",
            "--feature_layers", "0:1", "1:3", "--feature_weight", "1", "--top_k", "32",
        ]
    )  # fmt: skip
    assert cfg.loss == "jsd" and cfg.beta == 0.2 and cfg.temperature == 2.0
    assert cfg.feature_layers == [(0, 1), (1, 3)] and cfg.top_k == 32


def test_round_trip_through_to_dict():
    cfg = DistillationConfig(**BASE, feature_layers=[[0, 2]], loss="tvd")
    again = DistillationConfig(
        **{k: v for k, v in cfg.to_dict().items() if k in BASE or k in ("feature_layers", "loss")}
    )
    assert again.feature_layers == [(0, 2)] and again.loss == "tvd"
