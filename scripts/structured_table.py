#!/usr/bin/env python
"""Perplexity before any recovery for every importance criterion x granularity at one budget.

Each criterion's scores are computed once on the dense model (calibration: seeded windows of
``--calib``; cached next to ``--out``), then every granularity prunes a fresh copy to ``--sparsity`` of the decoder
parameters (uniform shapes) and is scored on the first ``--eval-windows`` x ``--seqlen`` tokens of
``--eval`` (the pinned protocol of :func:`hf_compress.evaluate.perplexity`). Results are appended
to ``--out`` after every run, and runs already there are skipped (resumable).

    python scripts/structured_table.py --out structured_table.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import torch

from hf_compress.calibration import calibration_windows
from hf_compress.evaluate import perplexity
from hf_compress.models.loading import load_causal_lm
from hf_compress.pruning.structured import importance_scores
from hf_compress.recipes import data_dir
from hf_compress.structured import StructuredConfig, prune_structured

GRANULARITIES = {
    "ffn": ["ffn"],
    "heads+ffn": ["heads", "ffn"],
    "kv_groups+ffn": ["kv_groups", "ffn"],
    "hidden": ["hidden"],
    "layers": ["layers"],
}
CRITERIA = ["magnitude_l1", "magnitude_l2", "random", "activation", "taylor"]


def parse_args() -> argparse.Namespace:
    data = data_dir()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--calib", default=str(data / "wikitext-2" / "valid.txt"))
    p.add_argument("--eval", default=str(data / "wikitext-2" / "test.txt"))
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument("--n-samples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--criteria", nargs="+", default=CRITERIA)
    p.add_argument("--granularities", nargs="+", default=list(GRANULARITIES), choices=list(GRANULARITIES))
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is faster on a crowded machine)"
    )
    p.add_argument("--out", default="structured_table.json")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    model, tokenizer, _ = load_causal_lm(args.model)

    def ppl(m):
        return perplexity(m, tokenizer, args.eval, seqlen=args.seqlen, max_windows=args.eval_windows)

    def save() -> None:
        out.write_text(json.dumps(results, indent=2))

    if "dense" not in results:
        result = ppl(model)
        results["dense"] = {"ppl": result.ppl, "protocol": result.protocol.describe()}
        save()
    calib = calibration_windows(
        tokenizer, args.calib, seqlen=args.seqlen, n_windows=args.n_samples, seed=args.seed
    )
    results["calibration"] = calib.provenance()
    scores = all_scores(model, calib, args)
    for granularity in args.granularities:  # whole columns first
        for criterion in args.criteria:
            key = f"{criterion}/{granularity}"
            if key in results["runs"]:
                continue
            pruned = copy.deepcopy(model)
            config = StructuredConfig(
                targets=GRANULARITIES[granularity],
                sparsity=args.sparsity,
                importance=criterion,
                n_samples=args.n_samples,
                seqlen=args.seqlen,
                seed=args.seed,
            )
            prune_structured(pruned, config, scores=scores[criterion])
            report = pruned.hf_compress_report
            result = ppl(pruned)
            results["runs"][key] = {
                "ppl": result.ppl,
                "removed_decoder_fraction": report.removed_decoder_fraction,
                "removed_total_fraction": report.removed_total_fraction,
                "after": report.after,
            }
            save()
            logging.info("%s: ppl %.2f (%s)", key, result.ppl, report.summary())
            del pruned
    print(table(results))


def all_scores(model, calib, args: argparse.Namespace) -> dict:
    """Every criterion's scores of every unit, computed once on the dense model (cached next to --out)."""
    cache = Path(args.out).with_suffix(".scores.pt")
    scores = torch.load(cache, weights_only=False) if cache.exists() else {}
    targets = sorted({t for g in args.granularities for t in GRANULARITIES[g]} | {"kv_groups"})
    for criterion in args.criteria:
        if criterion not in scores:
            tic = time.perf_counter()
            scores[criterion] = importance_scores(model, criterion, targets, calib=calib, seed=args.seed)
            logging.info("%s scores in %.0f s", criterion, time.perf_counter() - tic)
            torch.save(scores, cache)
    return scores


def table(results: dict) -> str:
    grans = [g for g in GRANULARITIES if any(k.endswith(f"/{g}") for k in results["runs"])]
    lines = [
        f"dense: {results['dense']['ppl']:.2f} ({results['dense']['protocol']})",
        "",
        "| criterion | " + " | ".join(grans) + " |",
        "|---|" + "---|" * len(grans),
    ]
    for criterion in CRITERIA:
        cells = [results["runs"].get(f"{criterion}/{g}") for g in grans]
        if any(cells):
            lines.append(
                f"| {criterion} | " + " | ".join(f"{c['ppl']:.2f}" if c else "" for c in cells) + " |"
            )
    removed = [
        results["runs"].get(f"taylor/{g}") or next(v for k, v in results["runs"].items() if k.endswith(g))
        for g in grans
    ]
    lines.append(
        "| removed (decoder / all) | "
        + " | ".join(
            f"{r['removed_decoder_fraction']:.1%} / {r['removed_total_fraction']:.1%}" for r in removed
        )
        + " |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
