"""Distillation in 2 CPU processes (gloo), launched the documented way:

    ACCELERATE_USE_CPU=true accelerate launch --config_file recipes/accelerate_configs/multi_cpu.yaml ...

(accelerate starts the processes through torchrun). The run must equal one process on the same
global batches: same per-step losses, same final weights.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_compress.distill.cli_entry import distill_main
from tests.distributed.distill_cases import (
    GLOBAL_BATCH,
    STEPS,
    distill_argv,
    pruned_student,
    recover,
    write_inputs,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "recipes/accelerate_configs/multi_cpu.yaml"


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist_kd")
    write_inputs(root)
    accelerate = Path(sys.executable).with_name("accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), ACCELERATE_USE_CPU="true")
    cmd = [str(accelerate), "launch", "--config_file", str(CONFIG), str(ROOT / "tests/distributed/distill_worker.py"),
           str(root)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


@pytest.fixture(scope="module")
def worker(two_process_run) -> list[dict]:
    return json.loads((two_process_run / "worker.json").read_text())


def _losses(folder: Path) -> list[float]:
    report = json.loads((folder / "distill_report.json").read_text())
    return [h["loss"] for h in report["log_history"] if "loss" in h]


def test_two_processes_match_one_process(two_process_run, tmp_path):
    single = tmp_path / "single"
    paths = write_inputs(tmp_path)
    distill_main(distill_argv(paths, single, per_device=GLOBAL_BATCH))
    multi = two_process_run / "kd"
    assert len(_losses(multi)) == STEPS
    assert _losses(multi) == pytest.approx(_losses(single), rel=1e-5)
    want, got = load_file(single / "model.safetensors"), load_file(multi / "model.safetensors")
    start = load_file(paths["student"] / "model.safetensors")
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(want[n], start[n]) for n in want)  # training moved the weights


def test_main_process_writes_one_complete_checkpoint(two_process_run):
    out = two_process_run / "kd"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "distill_report.json"} <= names
    assert not any(n.startswith(".") for n in names)  # no temporary folder left
    report = json.loads((out / "distill_report.json").read_text())
    assert report["num_processes"] == 2 and report["global_batch_size"] == GLOBAL_BATCH
    assert report["distributed_type"].endswith("MULTI_CPU")


def test_teacher_is_frozen_and_not_ddp_wrapped(worker):
    for rank in worker:
        assert rank["world"] == 2 and rank["student_wrapper"] == "DistributedDataParallel"
        assert rank["teacher_type"] == "LlamaForCausalLM"  # not DistributedDataParallel
        assert not rank["teacher_trainable"] and not rank["teacher_training_mode"]


def test_on_policy_choices_agree_and_token_counts_are_global(worker):
    runs = [rank["on_policy"] for rank in worker]
    assert runs[0]["decisions"] == runs[1]["decisions"]
    chosen = [d[2] for d in runs[0]["decisions"]]
    assert any(chosen) and not all(chosen)
    for step0, step1 in zip(runs[0]["counts"], runs[1]["counts"]):
        assert step0["num_items"] == step1["num_items"] == sum(step0["local"]) + sum(step1["local"])
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in runs)


def test_recovery_in_two_processes_matches_one_process(two_process_run):
    rank0, rank1 = torch.load(two_process_run / "recovered.pt")
    single = recover(per_device=GLOBAL_BATCH).state_dict()
    start = pruned_student().state_dict()
    for name, tensor in single.items():
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ in {name}"
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-4, atol=1e-6)
        if name.endswith("proj.weight"):
            assert (rank0[name][start[name] == 0] == 0).all(), f"a pruned weight of {name} came back"
    assert any(not torch.equal(single[n], start[n]) for n in single)
