"""Distributed calibration: 2 CPU processes (gloo) prune like one process on the same windows."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_compress import PrunerConfig, prune
from hf_compress.engine import shard_windows
from tests.distributed.cases import CASES, calibration, fresh_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(ROOT / "tests/distributed/prune_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.parametrize("method,pattern", CASES)
def test_two_processes_match_single_process(two_process_results, method, pattern):
    saved = torch.load(two_process_results / f"{method}_{pattern.replace(':', 'of')}.pt")
    rank0, rank1 = saved["ranks"]
    assert torch.equal(rank0, rank1)  # identical weights on every rank
    single = fresh_model()
    config = PrunerConfig(method=method, sparsity=None if ":" in pattern else 0.5, pattern=pattern,
                          n_samples=8, seqlen=16, block_size=16, batch_size=2)
    prune(single, config, dataset=calibration(), progress=False)
    for name, tensor in single.state_dict().items():
        dist_tensor = saved["state"][name]
        assert torch.equal(tensor == 0, dist_tensor == 0), f"mask differs in {name}"
        torch.testing.assert_close(dist_tensor, tensor, rtol=1e-4, atol=1e-5)


def test_more_processes_than_windows_is_refused(monkeypatch):
    import hf_compress.engine as engine

    monkeypatch.setattr(engine, "_world", lambda: 4)
    monkeypatch.setattr(engine, "_rank", lambda: 1)
    ids = torch.zeros(3, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="3 calibration windows cannot be split over 4 processes"):
        shard_windows(ids, torch.ones_like(ids))
    ids = torch.arange(8).view(8, 1)
    got, _ = shard_windows(ids, torch.ones_like(ids))
    assert got.flatten().tolist() == [1, 5]
