"""The half of the ONNX export that runs inside the ``[optimum]`` environment (transformers 4.57).

Every optimum-onnx release pins ``transformers<4.58``, so :mod:`hf_compress.export` hands a
portable checkpoint (see :mod:`hf_compress.portable`) and a reference-logits file recorded under
transformers 5.x (see :mod:`hf_compress.reference_logits`) to this module, in that environment's
interpreter::

    .venv-optimum/bin/python -m hf_compress.export_optimum CKPT OUT --task text-generation-with-past \
        --quantize int8 --report OUT/optimum_report.json

Steps: (1) prove that the checkpoint loads here as the same model (reference logits); (2) export
with ``optimum.exporters.onnx.main_export``; (3) ONNX Runtime dynamic int8 quantization with
``ORTQuantizer`` and ``AutoQuantizationConfig.<arch>(is_static=False)``; (4) parity of every graph
against PyTorch here, and greedy generation through Optimum's ``ORTModelForCausalLM.generate``.
Only the standard library, torch and transformers are imported at module level.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CAUSAL_TASK = "text-generation-with-past"
CLASSIFICATION_TASK = "text-classification"
TASKS = (CAUSAL_TASK, CLASSIFICATION_TASK)
ARCHS = ("auto", "avx512_vnni", "avx512", "avx2", "arm64")
FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
PARITY_TEXTS = ("The capital of France is", "def fibonacci(n):\n    ")
_PORTABLE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


class OptimumUnavailableError(RuntimeError):
    """Optimum's ONNX export cannot run in this interpreter."""


def optimum_problem() -> str | None:
    """Why Optimum's ONNX export cannot run here, or ``None`` when it can."""
    import transformers
    from packaging.version import Version

    if (
        importlib.util.find_spec("optimum") is None
        or importlib.util.find_spec("optimum.exporters.onnx") is None
    ):
        return "optimum-onnx is not installed in this interpreter"
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed in this interpreter"
    if Version(transformers.__version__).release >= (4, 58):
        return f"transformers {transformers.__version__} is installed; optimum-onnx needs transformers<4.58"
    return None


def cpu_arch() -> str:
    """The ``AutoQuantizationConfig`` constructor that fits this CPU (``arm64`` / ``avx512_vnni`` / ...)."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = cpuinfo.read_text(errors="ignore")
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def export_in_this_env(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    task: str = CAUSAL_TASK,
    quantize: str | None = "int8",
    arch: str = "auto",
    per_channel: bool = True,
    fp32_layers: tuple[str, ...] = (),
    opset: int | None = None,
    reference: str | Path | None = None,
    atol: float = 1e-3,
    generate_tokens: int = 8,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``output_dir`` (an existing empty folder) with Optimum; return a report.

    Raises:
        OptimumUnavailableError: not in an environment with optimum-onnx and transformers<4.58.
        ReferenceMismatchError: the checkpoint does not reproduce the reference logits here.
    """
    problem = optimum_problem()
    if problem:
        raise OptimumUnavailableError(problem)
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not supported; allowed: {TASKS}")
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not one of {ARCHS}")
    checkpoint, out = Path(checkpoint), Path(output_dir)
    model, tokenizer = _load(checkpoint, task)
    report: dict[str, Any] = {"task": task, "versions": _versions(), "files": {}}
    report["cross_version"] = _cross_version(model, tokenizer, checkpoint, reference, atol, task)
    _export(checkpoint, out, task, opset)
    files = {"fp32": FP32_FILE}
    if quantize == "int8":
        report["quantization"] = _quantize(out, arch, per_channel, fp32_layers)
        files["int8"] = INT8_FILE
    for name in _PORTABLE_FILES:  # keep the files both transformers versions read the same way
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out / name)
    report["files"] = files
    report["optimum_checks"] = {
        variant: _check_graph(out, file, model, tokenizer, task, generate_tokens)
        for variant, file in files.items()
    }
    return report


def _load(checkpoint: Path, task: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    loader = AutoModelForCausalLM if task == CAUSAL_TASK else AutoModelForSequenceClassification
    model = loader.from_pretrained(str(checkpoint), torch_dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(checkpoint))


def _cross_version(model, tokenizer, checkpoint: Path, reference, atol: float, task: str) -> dict[str, Any]:
    from .reference_logits import REFERENCE_FILE, check_reference

    path = Path(reference) if reference else checkpoint / REFERENCE_FILE
    if task != CAUSAL_TASK:
        return {"checked": False, "why": "reference logits are recorded for causal LMs only"}
    if not path.is_file():
        logger.warning(
            "no reference logits at %s: cannot prove that %s loads here as the model it was saved from",
            path,
            checkpoint,
        )
        return {"checked": False, "why": f"no reference file at {path}"}
    return {"checked": True, **check_reference(model, tokenizer, path, atol=atol).to_dict()}


def _export(checkpoint: Path, out: Path, task: str, opset: int | None) -> None:
    from optimum.exporters.onnx import main_export

    logger.info("optimum main_export %s -> %s (task %s)", checkpoint, out, task)
    main_export(str(checkpoint), str(out), task=task, opset=opset, device="cpu", do_validation=False)


def _quantize(out: Path, arch: str, per_channel: bool, fp32_layers: tuple[str, ...] = ()) -> dict[str, Any]:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    arch = cpu_arch() if arch == "auto" else arch
    keep_fp32 = activation_matmuls(out / FP32_FILE)
    chosen = matmuls_matching(out / FP32_FILE, fp32_layers)
    config = getattr(AutoQuantizationConfig, arch)(
        is_static=False, per_channel=per_channel, nodes_to_exclude=keep_fp32 + chosen
    )
    quantizer = ORTQuantizer.from_pretrained(str(out), file_name=FP32_FILE)
    quantizer.quantize(save_dir=str(out), quantization_config=config)
    return {
        "not_quantized": f"{len(keep_fp32)} MatMuls of two activations (attention scores, RoPE angles) stay fp32",
        "fp32_layers": {"patterns": list(fp32_layers), "matmuls": len(chosen)},
        "method": "onnxruntime dynamic int8 (optimum ORTQuantizer)",
        "arch": arch,
        "per_channel": per_channel,
        "weights": str(config.weights_dtype),
        "activations": str(config.activations_dtype) + " (quantized at run time)",
        "operators": list(config.operators_to_quantize),
    }


def activation_matmuls(path: str | Path) -> list[str]:
    """Names of the ``MatMul`` nodes whose second operand is not a constant weight.

    Optimum's ``ORTQuantizer`` builds ONNX Runtime's quantizer without the ``MatMulConstBOnly``
    option that ``onnxruntime.quantization.quantize_dynamic`` sets by default, so in dynamic mode
    it would also quantize activation x activation products to uint8 with one per-tensor scale:
    the attention scores and, worst, the RoPE angles (positions x inverse frequencies), which wrecks
    a decoder (SmolLM2-135M: perplexity 27.6 -> 85). These nodes are passed as ``nodes_to_exclude``.
    A tensor counts as constant when it is an initializer or computed from constants only.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constant = {init.name for init in graph.initializer}
    excluded = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant" or (node.input and all(i in constant for i in node.input if i)):
            constant.update(node.output)
        if node.op_type == "MatMul" and node.input[1] not in constant:
            excluded.append(node.name)
    return excluded


def matmuls_matching(path: str | Path, patterns: tuple[str, ...]) -> list[str]:
    """Names of the ``MatMul`` nodes of the graph file whose name or module path matches a regex."""
    if not patterns:
        return []
    import onnx

    from .onnx_nodes import matmuls_named

    return matmuls_named(onnx.load(str(path), load_external_data=False).graph.node, patterns)


def _check_graph(out: Path, file: str, model, tokenizer, task: str, generate_tokens: int) -> dict[str, Any]:
    """Optimum's own runtime class on ``file`` against PyTorch (this environment)."""
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSequenceClassification

    cls = ORTModelForCausalLM if task == CAUSAL_TASK else ORTModelForSequenceClassification
    ort_model = cls.from_pretrained(str(out), file_name=file)
    diffs, generations = [], []
    with torch.inference_mode():
        for text in PARITY_TEXTS:
            enc = tokenizer(text, return_tensors="pt")
            enc = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            if task == CAUSAL_TASK:
                enc.pop("token_type_ids", None)  # some 4.57 fast tokenizers add it; decoders take none
            ref, got = model(**enc).logits, ort_model(**enc).logits
            diffs.append(float((ref - got).abs().max()))
            if task == CAUSAL_TASK:
                kw = {
                    "max_new_tokens": generate_tokens,
                    "do_sample": False,
                    "pad_token_id": tokenizer.eos_token_id,
                }
                want = model.generate(**enc, **kw)[0].tolist()
                have = ort_model.generate(**enc, **kw)[0].tolist()
                generations.append({"pytorch": want, "onnx": have, "equal": want == have})
    return {"max_abs_diff": max(diffs), "generation": generations}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("transformers", "torch", "optimum", "optimum-onnx", "onnx", "onnxruntime"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hf_compress.export_optimum", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("checkpoint")
    parser.add_argument("output_dir", help="an existing, empty folder")
    parser.add_argument("--task", default=CAUSAL_TASK, choices=TASKS)
    parser.add_argument("--quantize", default=None, choices=["int8"])
    parser.add_argument("--arch", default="auto", choices=ARCHS)
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--fp32-layer", action="append", default=[], help="regex of MatMul node names kept fp32"
    )
    parser.add_argument("--opset", type=int, default=None)
    parser.add_argument("--reference", default=None)
    parser.add_argument("--atol", type=float, default=1e-3)
    parser.add_argument("--generate-tokens", type=int, default=8)
    parser.add_argument("--report", required=True, help="where to write the JSON report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = export_in_this_env(
        args.checkpoint,
        args.output_dir,
        task=args.task,
        quantize=args.quantize,
        arch=args.arch,
        per_channel=args.per_channel,
        fp32_layers=tuple(args.fp32_layer),
        opset=args.opset,
        reference=args.reference,
        atol=args.atol,
        generate_tokens=args.generate_tokens,
    )
    Path(args.report).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
