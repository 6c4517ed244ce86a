#!/usr/bin/env python
"""CPU speed of structurally pruned models against the dense one, measured in the same process.

Each granularity prunes a copy of the dense model to ``--sparsity`` of its decoder parameters
(uniform shapes; which units go does not change the speed, so the importance is ``magnitude_l1``,
which needs no data). Then ``--rounds`` rounds run every model in turn (dense, pruned 1, pruned 2,
..., dense, ...), each run a prefill of ``--prompt`` random tokens at batch 1 followed by
``--new`` greedy decode steps with the KV cache (:func:`hf_compress.evaluate.latency`), so drifts
in machine load hit every model alike. Reported: medians and the speed-up over dense.

    python bench/bench_structured_speed.py --granularities heads+ffn ffn hidden layers --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
from pathlib import Path

import torch

from hf_compress.evaluate import latency
from hf_compress.models.loading import load_causal_lm
from hf_compress.structured import StructuredConfig, prune_structured

GRANULARITIES = {
    "ffn": ["ffn"],
    "heads+ffn": ["heads", "ffn"],
    "kv_groups+ffn": ["kv_groups", "ffn"],
    "hidden": ["hidden"],
    "layers": ["layers"],
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument(
        "--granularities",
        nargs="+",
        default=["heads+ffn", "ffn", "hidden", "layers"],
        choices=list(GRANULARITIES),
    )
    p.add_argument("--round-to", type=int, default=8, help="FFN / hidden widths rounded to this multiple")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


def build_models(args: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, dict]]:
    dense, _, _ = load_causal_lm(args.model)
    models = {"dense": (dense, {"removed_decoder_fraction": 0.0, "removed_total_fraction": 0.0, "dims": ""})}
    for name in args.granularities:
        pruned = copy.deepcopy(dense)
        config = StructuredConfig(
            targets=GRANULARITIES[name],
            sparsity=args.sparsity,
            importance="magnitude_l1",
            round_to=args.round_to,
        )
        prune_structured(pruned, config, progress=False)
        report = pruned.hf_compress_report
        a = report.after
        dims = f"L{a['layers']} D{a['hidden']} H{a['heads']}/{a['kv_heads']} F{a['ffn']}"
        models[name] = (
            pruned.eval(),
            {
                "removed_decoder_fraction": report.removed_decoder_fraction,
                "removed_total_fraction": report.removed_total_fraction,
                "dims": dims,
            },
        )
    return models


def measure(models: dict, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    runs = {name: {"prefill_ms": [], "decode_tokens_per_s": []} for name in models}
    for model, _ in models.values():  # warm-up: allocator, kernels, caches
        latency(model, prompt_tokens=args.prompt, new_tokens=args.new, warmup=0, repeats=1)
    for r in range(args.rounds):
        for name, (model, _) in models.items():
            result = latency(
                model, prompt_tokens=args.prompt, new_tokens=args.new, warmup=0, repeats=1, seed=r
            )
            runs[name]["prefill_ms"].append(result["prefill_ms"])
            runs[name]["decode_tokens_per_s"].append(result["decode_tokens_per_s"])
        logging.info("round %d/%d done", r + 1, args.rounds)
    return runs


def report(models: dict, runs: dict, args: argparse.Namespace) -> dict:
    dense = runs["dense"]
    dense_prefill = statistics.median(dense["prefill_ms"])
    dense_decode = statistics.median(dense["decode_tokens_per_s"])
    rows = {}
    for name, (_, info) in models.items():
        prefill = statistics.median(runs[name]["prefill_ms"])
        decode = statistics.median(runs[name]["decode_tokens_per_s"])
        rows[name] = {
            **info,
            "prefill_ms": prefill,
            "decode_tokens_per_s": decode,
            "prefill_speedup": dense_prefill / prefill,
            "decode_speedup": decode / dense_decode,
            "runs": runs[name],
        }
    return {
        "model": args.model,
        "sparsity": args.sparsity,
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "results": rows,
    }


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_models(args)
    with torch.inference_mode():
        runs = measure(models, args)
    result = report(models, runs, args)
    print(
        f"{args.model}, fp32, {result['threads']} threads, prefill {args.prompt} tokens at batch 1, "
        f"{args.new} decode steps with KV cache, median of {args.rounds} alternating rounds"
    )
    print(
        "| model | dims | decoder params removed | all params removed | prefill ms | prefill speed-up "
        "| decode tok/s | decode speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in result["results"].items():
        print(
            f"| {name} | {row['dims']} | {row['removed_decoder_fraction']:.1%} | {row['removed_total_fraction']:.1%} "
            f"| {row['prefill_ms']:.0f} | {row['prefill_speedup']:.2f}x | {row['decode_tokens_per_s']:.1f} "
            f"| {row['decode_speedup']:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
