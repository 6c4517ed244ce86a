#!/usr/bin/env python
"""Compact sparse checkpoints against dense ones, on a real model, in fp32 and bf16.

For each pattern (2:4 and 50 % unstructured) the model is pruned while loading
(``from_pretrained(quantization_config=PrunerConfig(...))``, SparseGPT), then saved compact with
byte-plane coding (the default), compact without it (``entropy_coding = False``) and dense
(``compact = False``) in fp32, and again in bf16 after reloading the
compact fp32 folder with ``dtype=torch.bfloat16``. Each folder is reloaded and
compared with the in-memory model (max |logit difference| and bit equality of every tensor).
Finally plain transformers, without ``import hf_compress``, is asked to load a compact folder in a
fresh interpreter; its error is printed.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/compact_sizes.py --out /tmp/compact_sizes --json sizes.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_compress
from hf_compress.recipes import data_dir

PATTERNS = {"2:4": ("2:4", None), "unstructured": ("unstructured", 0.5)}
PROBE = "The tower is 324 metres tall, about the same height as an 81-storey building."
_ITEM = {"F32": 4, "BF16": 2, "F16": 2, "U8": 1}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="a fetch name or a local folder")
    p.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    p.add_argument("--method", default="sparsegpt")
    p.add_argument("--calib", default=str(data_dir() / "wikitext-2" / "valid.txt"))
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--out", default=None, help="folder for the checkpoints (default: a temporary one)")
    p.add_argument("--json", default=None, help="write the figures here")
    return p.parse_args()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def model_path(name: str) -> Path:
    return Path(name) if Path(name).is_dir() else hf_compress.fetch_model(name)


def sizes(folder: Path) -> tuple[int, int]:
    """``(bytes of the safetensors files, bytes of the tensors inside the decoder blocks)``."""
    files = sorted(folder.glob("*.safetensors"))
    blocks = 0
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in list(f.keys()):
                if ".layers." in key or ".h." in key:
                    piece = f.get_slice(key)
                    blocks += math.prod(piece.get_shape()) * _ITEM[piece.get_dtype()]
    return sum(f.stat().st_size for f in files), blocks


def compare(model: Any, folder: Path, dtype: torch.dtype, ids: torch.Tensor) -> dict[str, Any]:
    """Reload ``folder`` and compare it with ``model``: max |logit diff|, every tensor bit-equal."""
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    with torch.no_grad():
        diff = (reloaded(ids).logits.float() - model(ids).logits.float()).abs().max().item()
    a, b = model.state_dict(), reloaded.state_dict()
    equal = a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    return {"max_logit_diff": diff, "tensors_equal": equal, "reloaded_dtype": str(reloaded.dtype)}


def prune_at_load(path: Path, pattern: str, args: argparse.Namespace) -> tuple[Any, float]:
    kind, sparsity = PATTERNS[pattern]
    config = hf_compress.PrunerConfig(
        method=args.method, pattern=kind, sparsity=sparsity, n_samples=args.n_samples, seqlen=args.seqlen,
        dataset=args.calib, tokenizer=AutoTokenizer.from_pretrained(path),
    )  # fmt: skip
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=torch.float32)
    return model, time.perf_counter() - start


VARIANTS = {"compact": (True, True), "compact_uncoded": (True, False), "dense": (False, False)}
"""Folder -> (``compact``, ``entropy_coding``) of the record when saving it."""


def save_variants(model: Any, root: Path, tag: str) -> dict[str, dict[str, Any]]:
    """Save ``model`` in every :data:`VARIANTS` layout under ``root`` (timed); leave it compact and coded."""
    record, saved = model.config.quantization_config, {}
    for name, (compact, coding) in VARIANTS.items():
        record.compact, record.entropy_coding = compact, coding
        start = time.perf_counter()
        model.save_pretrained(root / f"{tag}-{name}")
        saved[name] = {"folder": root / f"{tag}-{name}", "save_seconds": time.perf_counter() - start}
    record.compact, record.entropy_coding = True, True
    return saved


def measure_dtype(model: Any, root: Path, tag: str, dtype: torch.dtype, ids: torch.Tensor) -> dict[str, Any]:
    saved = save_variants(model, root, tag)
    row: dict[str, Any] = {"folder": str(saved["compact"]["folder"])}
    dense_file, dense_blocks = sizes(saved["dense"]["folder"])
    for name, entry in saved.items():
        file, blocks = sizes(entry["folder"])
        start = time.perf_counter()
        reload = compare(model, entry["folder"], dtype, ids)
        row[name] = {
            "file": file, "blocks": blocks, "file_ratio": dense_file / file, "block_ratio": dense_blocks / blocks,
            "save_seconds": entry["save_seconds"], "reload_and_compare_seconds": time.perf_counter() - start,
            "reload": reload,
        }  # fmt: skip
        log(
            f"{tag} {name}: file {file:,} B ({dense_file / file:.3f}x of dense); decoder blocks {blocks:,} B "
            f"({dense_blocks / blocks:.3f}x); saved in {entry['save_seconds']:.1f} s; reload {reload}"
        )
    return row


def measure_pattern(path: Path, pattern: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    log(f"{pattern}: pruning at load ({args.method}, {args.n_samples} x {args.seqlen} tokens)")
    model, seconds = prune_at_load(path, pattern, args)
    report = hf_compress.sparsity_report(model)
    log(f"{pattern}: pruned in {seconds:.1f} s, decoder sparsity {report.total:.4f}")
    ids = AutoTokenizer.from_pretrained(path)(PROBE, return_tensors="pt").input_ids
    out = {"prune_seconds": seconds, "sparsity": report.total}
    tag = pattern.replace(":", "of")
    out["fp32"] = measure_dtype(model, root, f"{tag}-fp32", torch.float32, ids)
    # bf16 as a user gets it: loaded with dtype=bfloat16 (model.to() would also round RoPE's inv_freq)
    half = AutoModelForCausalLM.from_pretrained(out["fp32"]["folder"], dtype=torch.bfloat16)
    out["bf16"] = measure_dtype(half, root, f"{tag}-bf16", torch.bfloat16, ids)
    return out


def plain_load_error(folder: str) -> str:
    """Load ``folder`` with plain transformers in a fresh interpreter (no hf_compress); return its error."""
    code = "import sys; from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, folder], capture_output=True, text=True)
    if proc.returncode == 0:
        return "LOADED WITHOUT ERROR (wrong: the plugin was not required)"
    return [line for line in proc.stderr.splitlines() if line.strip()][-1]


def main() -> int:
    args = parse_args()
    path = model_path(args.model)
    root = Path(args.out or tempfile.mkdtemp(prefix="compact_sizes-"))
    root.mkdir(parents=True, exist_ok=True)
    figures = {"model": str(path), "method": args.method, "calibration": f"{args.n_samples} x {args.seqlen}"}
    for pattern in args.patterns:
        figures[pattern] = measure_pattern(path, pattern, root, args)
    figures["plain_load_error"] = plain_load_error(figures[args.patterns[0]]["fp32"]["folder"])
    log(f"plain transformers on a compact folder: {figures['plain_load_error']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
