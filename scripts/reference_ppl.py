"""Independent reference for the pruning papers' perplexity protocol (no hf_compress code).

Deliberately plain, so it can check ``hf_compress.evaluate.perplexity``: tokenize the text once,
slice non-overlapping windows of ``seqlen`` tokens from the start, take transformers' own
``model(input_ids=w, labels=w).loss`` per window (windows are equally long, so the mean of the
window losses is the mean token NLL), ``ppl = exp(mean)``. No special tokens are added.

    python scripts/reference_ppl.py --model /tmp/models/smollm2-135m-instruct \\
        --data ../shared/data/wikitext-2/test.txt --seqlen 512 --windows 64
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def reference_perplexity(model, tokenizer, text: str, seqlen: int, windows: int | None = None) -> float:
    """exp(mean over windows of the per-window mean NLL) on the first ``windows`` windows."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    n = ids.shape[1] // seqlen if windows is None else min(windows, ids.shape[1] // seqlen)
    losses = []
    with torch.no_grad():
        for i in range(n):
            w = ids[:, i * seqlen : (i + 1) * seqlen]
            losses.append(model(input_ids=w, labels=w).loss.double().item())
    return math.exp(sum(losses) / len(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a from_pretrained folder")
    parser.add_argument("--data", required=True, help="a .txt file, read whole")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=64)
    args = parser.parse_args()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    with open(args.data, encoding="utf-8") as f:
        text = f.read()
    ppl = reference_perplexity(model, tokenizer, text, args.seqlen, args.windows)
    report = {
        "ppl": ppl,
        "seqlen": args.seqlen,
        "windows": args.windows,
        "seconds": time.perf_counter() - start,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
