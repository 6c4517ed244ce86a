"""Run under ``torchrun --nproc_per_node N``: prune tiny models with split calibration windows.

Writes ``OUT/<method>_<pattern>.pt`` (rank 0's state dict + every rank's flattened weights).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hf_compress import PrunerConfig, prune  # noqa: E402
from tests.distributed.cases import CASES, calibration, fresh_model  # noqa: E402
from tests.distributed.clean_exit import run_and_exit  # noqa: E402


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    for method, pattern in CASES:
        model = fresh_model()
        config = PrunerConfig(
            method=method,
            sparsity=None if ":" in pattern else 0.5,
            pattern=pattern,
            n_samples=8,
            seqlen=16,
            block_size=16,
            batch_size=2,
        )
        prune(model, config, dataset=calibration(), progress=False)
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        if dist.get_rank() == 0:
            torch.save(
                {"state": model.state_dict(), "ranks": gathered},
                out / f"{method}_{pattern.replace(':', 'of')}.pt",
            )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    run_and_exit(main, Path(sys.argv[1]))
