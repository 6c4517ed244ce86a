"""PyTorch fp32 vs ONNX int8 for compressed SmolLM2-135M-Instruct variants: size, perplexity, CPU latency.

For each ``--variant NAME=MODEL`` (a fetch name or a checkpoint folder, e.g. the dense model and the
outputs of the 2:4 + recovery and 25%-structured + recovery recipes):

* PyTorch fp32 (transformers 5.x, this env): weights on disk, perplexity (first ``--windows`` x
  ``--seqlen`` windows of wikitext-2/test.txt, no BOS), latency (prefill ``--prompt`` random tokens,
  batch 1; greedy cached decode of ``--new-tokens``; median of ``--repeats`` after a warm-up).
* ONNX int8: exported with :func:`hf_compress.export_onnx` (Optimum in the [optimum] env unless
  ``--backend``), ONNX Runtime dynamic int8; the same perplexity protocol computed through
  onnxruntime, the same latency protocol through onnxruntime (as many threads as torch).

Prints a table with ratios against the first variant's PyTorch fp32 row and writes
``OUT/bench_export.json`` plus one export folder (with its model card) per variant::

    python bench/bench_export.py --variant dense=smollm2-135m-instruct \
        --variant 2of4-recovered=outputs/smollm2-135m-instruct-sparsegpt-2of4-recovered --out outputs/bench-export

Runs one model at a time; ~5-10 minutes per variant on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from hf_compress.evaluate import latency, perplexity
from hf_compress.export import ExportConfig, export_onnx
from hf_compress.models.loading import resolve_model
from hf_compress.recipes import data_dir


def pytorch_figures(model, tokenizer, folder: Path, args) -> dict:
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    tic = time.perf_counter()
    ppl = perplexity(
        model, tokenizer, args.dataset, seqlen=args.seqlen, max_windows=args.windows, progress=False
    )
    lat = latency(model, prompt_tokens=args.prompt, new_tokens=args.new_tokens, repeats=args.repeats)
    return {
        "weights_bytes": weights,
        "ppl": ppl.ppl,
        "protocol": ppl.protocol.to_dict(),
        "latency": lat,
        "seconds": time.perf_counter() - tic,
    }


def run_variant(name: str, model_ref: str, args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, base_id = resolve_model(model_ref)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    logging.info("%s: PyTorch fp32 figures", name)
    source = pytorch_figures(model, tokenizer, Path(path), args) | {"name": name}
    logging.info("%s: ONNX export + int8 figures", name)
    result = export_onnx(
        model,
        args.out / f"{name}-onnx",
        ExportConfig(backend=args.backend, quantize="int8", overwrite=True),
        tokenizer=tokenizer,
        evaluation={"dataset": args.dataset, "seqlen": args.seqlen, "max_windows": args.windows},
        latency={"prompt_tokens": args.prompt, "new_tokens": args.new_tokens, "repeats": args.repeats},
        card={
            "base_model": base_id if "/" in base_id and not base_id.startswith("/") else args.base_model,
            "source_results": source,
            "model_name": f"SmolLM2-135M-Instruct {name} (ONNX int8)",
            "limitations": [args.note] if args.note else [],
        },
        progress=False,
    )
    report = result.report
    onnx = {
        "weights_bytes": report["files"]["int8"]["bytes"],
        "fp32_onnx_bytes": report["files"]["fp32"]["bytes"],
        "ppl": report["evaluation"]["int8"]["ppl"],
        "latency": report["latency"]["int8"],
        "max_abs_diff": {v: p["max_abs_diff"] for v, p in report["parity"].items()},
        "generation_equal": {v: [g["equal"] for g in p["generation"]] for v, p in report["parity"].items()},
        "backend": report["backend"],
        "folder": str(result.path),
    }
    del model
    row = {"variant": name, "model": model_ref, "pytorch_fp32": source, "onnx_int8": onnx}
    if args.also_fp32_layers:
        row["onnx_int8_partial"] = partial_int8(result.graph("fp32"), tokenizer, args)
    return row


def partial_int8(fp32_graph: Path, tokenizer, args) -> dict:
    """int8 with the MatMuls matching ``--also-fp32-layers`` left fp32 (ORT ``quantize_dynamic``, same settings)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from hf_compress.export_optimum import activation_matmuls, matmuls_matching
    from hf_compress.onnx_eval import onnx_latency, onnx_perplexity
    from hf_compress.onnx_session import OnnxCausalLM

    patterns = tuple(args.also_fp32_layers)
    out = fp32_graph.with_name("model_quantized_partial.onnx")
    keep = activation_matmuls(fp32_graph) + matmuls_matching(fp32_graph, patterns)
    quantize_dynamic(
        str(fp32_graph),
        str(out),
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep,
        extra_options={"WeightSymmetric": True, "MatMulConstBOnly": True},
    )
    lm = OnnxCausalLM(out)
    ppl = onnx_perplexity(
        lm, tokenizer, args.dataset, seqlen=args.seqlen, max_windows=args.windows, progress=False
    )
    lat = onnx_latency(lm, prompt_tokens=args.prompt, new_tokens=args.new_tokens, repeats=args.repeats)
    return {
        "weights_bytes": out.stat().st_size,
        "ppl": ppl.ppl,
        "latency": lat,
        "fp32_layers": list(patterns),
        "file": str(out),
    }


def table(rows: list[dict]) -> str:
    ref = rows[0]["pytorch_fp32"]
    head = f"{'variant':<22}{'format':<24}{'size MB':>9}{'x size':>8}{'ppl':>9}{'prefill ms':>12}{'x speed':>9}{'decode tok/s':>14}{'x decode':>10}"
    lines = [head, "-" * len(head)]
    for row in rows:
        figures = [("PyTorch fp32", row["pytorch_fp32"]), ("ONNX int8", row["onnx_int8"])]
        if "onnx_int8_partial" in row:
            figures.append(
                (f"int8 ({'+'.join(row['onnx_int8_partial']['fp32_layers'])} fp32)", row["onnx_int8_partial"])
            )
        for label, fig in figures:
            lat = fig["latency"]
            lines.append(
                f"{row['variant']:<22}{label:<24}{fig['weights_bytes'] / 1e6:>9.1f}"
                f"{ref['weights_bytes'] / fig['weights_bytes']:>8.2f}{fig['ppl']:>9.3f}{lat['prefill_ms']:>12.0f}"
                f"{ref['latency']['prefill_ms'] / lat['prefill_ms']:>9.2f}{lat['decode_tokens_per_s']:>14.1f}"
                f"{lat['decode_tokens_per_s'] / ref['latency']['decode_tokens_per_s']:>10.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=MODEL")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-export"))
    parser.add_argument("--dataset", default=str(data_dir() / "wikitext-2" / "test.txt"))
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="auto", choices=["auto", "optimum", "transformers"])
    parser.add_argument("--base-model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--note", help="a line for the cards' limitations (e.g. that the CPU was shared)")
    parser.add_argument(
        "--also-fp32-layers",
        action="append",
        default=[],
        metavar="REGEX",
        help="also measure an int8 graph with these MatMuls left fp32 (e.g. down_proj)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.variant:
        name, _, model_ref = spec.partition("=")
        rows.append(run_variant(name, model_ref, args))
        (args.out / "bench_export.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(
        f"threads: torch {torch.get_num_threads()}; perplexity: {args.dataset}, first {args.windows} x {args.seqlen}"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
