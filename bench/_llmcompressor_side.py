"""llm-compressor side of the benchmark: one-shot SparseGPT / Wanda through its own API, saved dense.

Runs in llm-compressor's venv (``scripts/setup_llmcompressor_venv.sh``; it pins transformers <= 5.17),
one process per config, launched by ``bench/bench_llmcompressor.py``::

    .venv-llmc/bin/python bench/_llmcompressor_side.py --model DIR --calib calib.pt \\
        --method sparsegpt --pattern 2:4 --out OUT_DIR --result result.json

It imports nothing from hf_compress. The calibration windows come from ``calib.pt`` (the same
tokens hf-compress sees) as a ``datasets.Dataset`` with ``input_ids`` / ``attention_mask`` columns,
which llm-compressor uses as given (no re-tokenization, no shuffling). Settings mirror ours: the
sequential pipeline with one decoder layer per subgraph and error propagation, every Linear inside
the decoder layers (``lm_head`` ignored), damping 0.01 x mean diagonal, block 128. The timed region
is the ``oneshot`` call alone. The model is written with ``save_compressed=False`` (dense weights,
no compressed-tensors sparse format, which transformers >= 5.10 would not decode).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

PROCESS_START = time.perf_counter()

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from llmcompressor import oneshot  # noqa: E402
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

DECODER_LAYERS = r"re:.*layers\.\d+$"  # modules *containing* the Linear targets, in llm-compressor's terms


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far: ``VmHWM`` (MiB).

    Not ``ru_maxrss``: after fork + exec it also holds the parent's RSS at the fork (Linux records the
    forked copy's high-water mark at exec), so a child of a big parent would report the parent's size.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: best effort


def make_recipe(method: str, pattern: str, sparsity: float):
    """The llm-compressor modifier for ``method`` / ``pattern`` ("0:0" is its unstructured mask)."""
    common = {
        "sparsity": sparsity,
        "mask_structure": "2:4" if pattern == "2:4" else "0:0",
        "targets": [DECODER_LAYERS],
        "ignore": ["re:.*lm_head"],
    }
    if method == "sparsegpt":
        return SparseGPTModifier(**common, dampening_frac=0.01, block_size=128)
    return WandaPruningModifier(**common)


def calibration_dataset(path: str) -> Dataset:
    """``calib.pt`` -> a Dataset of ``input_ids`` / ``attention_mask`` rows (pre-tokenized)."""
    calib = torch.load(path)
    ids = calib["input_ids"]
    mask = calib.get("attention_mask", torch.ones_like(ids))
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist()})


def save_dense(model, out: Path) -> None:
    """Dense ``save_pretrained`` into a temp folder next to ``out``, then rename into place."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, save_compressed=False)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--calib", required=True)
    parser.add_argument("--method", choices=("sparsegpt", "wanda"), required=True)
    parser.add_argument("--pattern", choices=("unstructured", "2:4"), required=True)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()

    dataset = calibration_dataset(args.calib)
    n, seqlen = len(dataset), len(dataset[0]["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    layer_class = type(model.model.layers[0]).__name__  # bench-only: the peer needs a class name
    rss_loaded = rss_mib()
    recipe = make_recipe(args.method, args.pattern, args.sparsity)
    tic, cpu = time.perf_counter(), time.process_time()
    oneshot(
        model=model,
        recipe=recipe,
        dataset=dataset,
        num_calibration_samples=n,
        max_seq_length=seqlen,
        shuffle_calibration_samples=False,
        batch_size=args.batch_size,
        pipeline="sequential",
        sequential_targets=[layer_class],
    )
    prune_s, prune_cpu = time.perf_counter() - tic, time.process_time() - cpu
    peak_after_prune = peak_rss_mib()
    save_dense(model, Path(args.out))
    result = {
        "tool": "llm-compressor",
        "method": args.method,
        "pattern": args.pattern,
        "prune_seconds": prune_s,
        "prune_cpu_seconds": prune_cpu,
        "process_seconds": time.perf_counter() - PROCESS_START,
        "rss_after_load_mib": rss_loaded,
        "peak_rss_prune_mib": peak_after_prune,
        "peak_rss_total_mib": peak_rss_mib(),
        "calibration": [n, seqlen],
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "recipe": repr(recipe),
        "versions": {
            d: _version(d) for d in ("torch", "transformers", "llmcompressor", "compressed-tensors")
        },
    }
    Path(args.result).write_text(json.dumps(result, indent=2))


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
