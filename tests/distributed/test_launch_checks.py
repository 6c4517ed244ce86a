"""Process layouts refused at start, before any model loads; the accelerate configs are valid."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

import hf_compress.launch_checks as launch
from hf_compress.launch_checks import check_launch
from tests.distill.conftest import base_args

CONFIGS = Path(__file__).resolve().parents[2] / "recipes/accelerate_configs"


@pytest.fixture
def two_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)


def test_one_process_is_always_fine(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(launch, "accelerator_device_count", lambda: 0)
    check_launch(use_cpu=False)


def test_more_processes_than_gpus_is_refused(two_processes, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(launch, "accelerator_device_count", lambda: 2)
    with pytest.raises(ValueError, match="num_processes=4 on this machine .* only 2 GPU"):
        check_launch(use_cpu=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    check_launch(use_cpu=False)


def test_several_processes_without_gpu_need_use_cpu(two_processes, monkeypatch):
    monkeypatch.setattr(launch, "accelerator_device_count", lambda: 0)
    with pytest.raises(ValueError, match="no GPU is visible and use_cpu is false"):
        check_launch(use_cpu=False)
    check_launch(use_cpu=True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    check_launch(use_cpu=False)


def test_cpu_allows_more_processes_than_cores(two_processes, monkeypatch, caplog):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_launch(use_cpu=True)
    assert "64 processes share 2 CPU cores" in caplog.text and "ACCELERATE_USE_FSDP" in caplog.text


def test_distillation_config_checks_the_layout_first(two_processes, monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "accelerator_device_count", lambda: 0)
    with pytest.raises(ValueError, match="Pass --use_cpu true"):
        base_args(tmp_path, use_cpu=False)


def test_recovery_checks_the_layout_before_loading(two_processes, monkeypatch):
    from hf_compress.stages_recover import validate_recover

    monkeypatch.setattr(launch, "accelerator_device_count", lambda: 0)
    with pytest.raises(ValueError, match="no GPU is visible"):
        validate_recover({"dataset": "wikitext", "loss": "lm"})


@pytest.mark.parametrize(
    "name,kind,processes",
    [("ddp", DistributedType.MULTI_GPU, 8), ("fsdp2", DistributedType.FSDP, 8),
     ("zero3", DistributedType.DEEPSPEED, 8), ("multi_cpu", DistributedType.MULTI_GPU, 2)],
)  # fmt: skip
def test_accelerate_configs_load(name, kind, processes):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == kind and config.num_processes == processes
    assert config.use_cpu == (name == "multi_cpu")
    if name == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] is False
    if name == "zero3":
        assert (
            config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_save_16bit_model"]
        )
