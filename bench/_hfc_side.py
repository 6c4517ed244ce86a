"""hf-compress side of the llm-compressor benchmark: prune one config, save it dense, report timings.

Run by ``bench/bench_llmcompressor.py`` in the project's venv (one process per config, so peak RSS
belongs to this config alone)::

    python bench/_hfc_side.py --model DIR --calib calib.pt --method sparsegpt --pattern 2:4 \\
        --out OUT_DIR --result result.json

``calib.pt`` holds the token windows both tools calibrate on (``input_ids`` ``[n, T]``). The timed
region is the ``hf_compress.prune`` call alone; model load and save are outside it.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import resource
import shutil
import time
from pathlib import Path

PROCESS_START = time.perf_counter()

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import hf_compress as hfc  # noqa: E402


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


def save_dense(model, out: Path) -> None:
    """Plain ``save_pretrained`` into a temp folder next to ``out``, then rename into place."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
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
    parser.add_argument("--profile", help="write cProfile stats of the prune call here (slows it down)")
    args = parser.parse_args()

    calib = torch.load(args.calib)
    ids = calib["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    rss_loaded = rss_mib()
    config = hfc.PrunerConfig(
        method=args.method,
        sparsity=args.sparsity if args.pattern == "unstructured" else None,
        pattern=args.pattern,
        n_samples=ids.shape[0],
        seqlen=ids.shape[1],
        seed=0,
        block_size=128,
        damping=0.01,
        batch_size=args.batch_size,
    )
    tic, cpu = time.perf_counter(), time.process_time()
    with _profiled(args.profile):
        hfc.prune(model, config, dataset=ids, progress=True)
    prune_s, prune_cpu = time.perf_counter() - tic, time.process_time() - cpu
    peak_after_prune = peak_rss_mib()
    report = model.hf_compress_report.to_dict()
    save_dense(model, Path(args.out))
    result = {
        "tool": "hf-compress",
        "method": args.method,
        "pattern": args.pattern,
        "prune_seconds": prune_s,
        "prune_cpu_seconds": prune_cpu,
        "process_seconds": time.perf_counter() - PROCESS_START,
        "rss_after_load_mib": rss_loaded,
        "peak_rss_prune_mib": peak_after_prune,
        "peak_rss_total_mib": peak_rss_mib(),
        "calibration": list(ids.shape),
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "cholesky_retries": report.get("cholesky_retries"),
        "versions": {
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "hf_compress": hfc.__version__,
        },
    }
    Path(args.result).write_text(json.dumps(result, indent=2))


@contextlib.contextmanager
def _profiled(path: str | None):
    """cProfile the enclosed block into ``path`` (no-op when ``path`` is None)."""
    if path is None:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
