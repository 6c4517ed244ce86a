"""Where the teacher goes: never DDP-wrapped; FSDP/ZeRO-3 sharding rules; FSDP2 sharding on CPU (gloo)."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from accelerate.utils import DistributedType
from torch import nn
from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy, transformer_auto_wrap_policy

from hf_compress.distill.teacher_placement import check_shardable, place_teacher, teacher_block_classes
from tests.distill.conftest import make_llama

ROOT = Path(__file__).resolve().parents[2]


def plugin(names=None, policy=transformer_auto_wrap_policy, ram_efficient=False) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        auto_wrap_policy=policy, transformer_cls_names_to_wrap=names, cpu_ram_efficient_loading=ram_efficient
    )


def accelerator(kind, fsdp_plugin=None) -> types.SimpleNamespace:
    prepared = []

    def prepare_model(model, evaluation_mode=False):
        prepared.append(evaluation_mode)
        return model

    state = types.SimpleNamespace(distributed_type=kind, fsdp_plugin=fsdp_plugin)
    return types.SimpleNamespace(state=state, prepare_model=prepare_model, prepared=prepared)


def int8_teacher() -> nn.Module:
    teacher = make_llama(2, 32)
    layer = teacher.model.layers[0].mlp
    layer.up_proj.weight = nn.Parameter(torch.zeros(64, 32, dtype=torch.int8), requires_grad=False)
    teacher.config.quantization_config = {"quant_method": "bitsandbytes"}
    return teacher


def test_ddp_and_single_process_only_place_the_teacher():
    acc = accelerator(DistributedType.MULTI_CPU)
    teacher = make_llama(2, 32)
    assert place_teacher(teacher, acc) is teacher and acc.prepared == [True]  # evaluation_mode: no DDP
    assert place_teacher(teacher, acc, device="cpu") is teacher and acc.prepared == [True]


def test_block_classes_come_from_the_config_then_from_the_teacher():
    teacher = make_llama(2, 32)
    assert [c.__name__ for c in teacher_block_classes(teacher, plugin(["LlamaDecoderLayer"]))] == [
        "LlamaDecoderLayer"
    ]
    # the configured class is the student's (GPT-2) but the teacher is a Llama: its own _no_split_modules
    assert [c.__name__ for c in teacher_block_classes(teacher, plugin("GPT2Block"))] == ["LlamaDecoderLayer"]
    assert teacher_block_classes(teacher, plugin(policy=size_based_auto_wrap_policy)) == ()


def test_fsdp_refuses_a_teacher_without_a_layer_class_to_wrap():
    teacher = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"no transformer layer class to wrap.*\['LlamaDecoderLayer'\]"):
        place_teacher(teacher, accelerator(DistributedType.FSDP, plugin(["LlamaDecoderLayer"])))


@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_sharding_refuses_an_int8_teacher(kind):
    with pytest.raises(
        ValueError, match=r"up_proj.weight' has dtype torch.int8.*'bitsandbytes'.*teacher_device"
    ):
        place_teacher(int8_teacher(), accelerator(kind, plugin()))
    place_teacher(int8_teacher(), accelerator(DistributedType.MULTI_GPU))  # replicated: fine


def test_fsdp_refuses_cpu_ram_efficient_loading_and_meta_teachers():
    with pytest.raises(ValueError, match="fsdp_cpu_ram_efficient_loading=true"):
        check_shardable(make_llama(2, 32), "FSDP", plugin(ram_efficient=True))
    with torch.device("meta"):
        teacher = make_llama(2, 32)
    with pytest.raises(ValueError, match="on the meta device"):
        check_shardable(teacher, "DeepSpeed")


def test_fsdp2_shards_the_teacher_block_by_block_and_keeps_its_outputs(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(ROOT / "tests/distributed/fsdp_teacher_worker.py"),
           str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in json.loads((tmp_path / "fsdp_teacher.json").read_text()):
        assert rank["root"] == "FSDPLlamaForCausalLM" and rank["blocks"] == ["FSDPLlamaDecoderLayer"]
        assert rank["sharded"] == "DTensor" and rank["diff"] < 1e-5
