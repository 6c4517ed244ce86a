"""Run under ``torchrun --nproc_per_node 2``: shard a teacher with FSDP2 on CPU (gloo) as the trainer does.

Writes ``OUT/fsdp_teacher.json`` (rank 0): how the teacher was wrapped, and the largest difference
between the sharded teacher's logits (computed the trainer's way) and the unsharded teacher's, per rank.
"""

import json
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: E402

from hf_compress.distill.forward import backbone_hidden, redirect  # noqa: E402
from hf_compress.distill.heads import lm_head  # noqa: E402
from hf_compress.distill.teacher_placement import place_teacher  # noqa: E402
from tests.distill.conftest import make_llama  # noqa: E402
from tests.distributed.clean_exit import run_and_exit  # noqa: E402


def fake_accelerator(plugin) -> types.SimpleNamespace:
    state = types.SimpleNamespace(distributed_type=DistributedType.FSDP, fsdp_plugin=plugin)
    return types.SimpleNamespace(state=state, device=torch.device("cpu"), torch_device_mesh=None)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    reference = make_llama(3, 48, seed=2).eval()
    teacher = make_llama(3, 48, seed=2).eval().requires_grad_(False)
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", cpu_ram_efficient_loading=False
    )
    teacher = place_teacher(teacher, fake_accelerator(plugin))
    ids = torch.randint(3, 60, (2, 7), generator=torch.Generator().manual_seed(dist.get_rank()))
    with torch.no_grad():
        hidden = redirect(teacher, teacher, backbone_hidden, teacher, {"input_ids": ids})
        head = lm_head(teacher)
        diff = (hidden @ head.weight.T - reference(input_ids=ids).logits).abs().max().item()
    facts = {
        "root": type(teacher).__name__,
        "blocks": sorted({type(b).__name__ for b in teacher.model.layers}),
        "sharded": type(teacher.model.layers[0].mlp.up_proj.weight).__name__,
        "diff": diff,
    }
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, facts)
    if dist.get_rank() == 0:
        (out / "fsdp_teacher.json").write_text(json.dumps(gathered))


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_and_exit(main, Path(sys.argv[1]))
