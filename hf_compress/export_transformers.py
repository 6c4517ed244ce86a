"""ONNX export with transformers' own exporter (``transformers.exporters``, transformers >= 5.20).

The path for users on the newest stack, where Optimum cannot run (optimum-onnx pins
transformers<4.58), and for shapes Optimum cannot handle (per-layer KV heads, an explicit
``head_dim``): ``OnnxExporter`` traces the modules themselves with ``torch.export``.

* Causal LMs: ``decompose_prefill_decode(..., multi_token_decode=True)`` captures the decode step
  with a symbolic query length; its graph also does the prefill (a decode on an empty cache), so a
  single graph ``model.onnx`` serves both (inputs ``input_ids``, ``position_ids``,
  ``input.cache.layers.{i}.keys|values``; batch 1).
* Sequence classifiers: one graph of ``input_ids`` / ``attention_mask``.
* int8: the exported program is quantized with ``OnnxRuntimeQuantizer(OnnxRuntimeDynamicConfig(...))``
  (ONNX Runtime ``quantize_dynamic``: int8 weights, uint8 activations quantized at run time), the
  settings of Optimum's ``AutoQuantizationConfig.avx512_vnni(is_static=False)``.

Layout: the fp32 export is an ``ExportedModel`` folder at the root (``export.json``,
``model.onnx`` + ``model.onnx.data``), the int8 one in ``int8/``; both load with
``transformers.exporters.ExportedModel.from_pretrained(folder[, subfolder="int8"])``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

MIN_TRANSFORMERS = (5, 20)
INT8_SUBFOLDER = "int8"
_NEEDED = ("onnx", "onnxscript", "onnxruntime")


def transformers_exporter_problem() -> str | None:
    """Why ``transformers.exporters`` cannot export ONNX here, or ``None`` when it can."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__).release < MIN_TRANSFORMERS:
        return f"transformers {transformers.__version__} has no `transformers.exporters` (needs >= 5.20)"
    missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        return f"transformers.exporters' ONNX path needs {missing}: pip install {' '.join(missing)}"
    return None


def export_with_transformers(
    model: Any,
    output_dir: str | Path,
    *,
    causal: bool,
    quantize: str | None,
    per_channel: bool = True,
    fp32_layers: tuple[str, ...] = (),
    opset: int | None = None,
) -> dict[str, Any]:
    """Export ``model`` into the existing folder ``output_dir``; return ``{"files": ..., "quantization": ...}``."""
    from transformers.exporters import OnnxConfig, OnnxExporter

    problem = transformers_exporter_problem()
    if problem:
        raise RuntimeError(problem)
    out = Path(output_dir)
    submodel, inputs = _sample(model, causal)
    exporter = OnnxExporter()
    config = OnnxConfig(dynamic=True, opset_version=opset)
    logger.info(
        "transformers.exporters: tracing %s (%s)",
        type(model).__name__,
        "decode step" if causal else "forward",
    )
    exported = exporter.export(submodel, inputs, config)
    exported.save_pretrained(out)
    files = {"fp32": "model.onnx"}
    report: dict[str, Any] = {"files": files}
    if quantize == "int8":
        program, settings = _quantize(exported.program, inputs, per_channel, fp32_layers)
        exported.components["model"].program = program
        exported.save_pretrained(out / INT8_SUBFOLDER)
        files["int8"] = f"{INT8_SUBFOLDER}/model.onnx"
        report["quantization"] = settings
    return report


def _sample(model: Any, causal: bool) -> tuple[Any, dict[str, Any]]:
    """The module to trace and its forward kwargs."""
    ids = torch.arange(3, 11, dtype=torch.long)[None] % model.config.vocab_size
    if not causal:
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    from transformers.exporters.utils import decompose_prefill_decode

    stages = decompose_prefill_decode(
        model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, multi_token_decode=True
    )
    return stages["decode"]


def _quantize(
    program: Any, inputs: dict[str, Any], per_channel: bool, fp32_layers: tuple[str, ...] = ()
) -> tuple[Any, dict[str, Any]]:
    from onnxruntime.quantization import QuantType
    from transformers.exporters import ExportFormat, OnnxRuntimeDynamicConfig, OnnxRuntimeQuantizer

    from .onnx_nodes import matmuls_named

    chosen = matmuls_named(program.graph, fp32_layers)
    settings = OnnxRuntimeDynamicConfig(
        nodes_to_exclude=chosen or None,
        per_channel=per_channel,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    quantizer = OnnxRuntimeQuantizer(settings)
    quantizer.validate_environment(ExportFormat.ONNX)
    quantized = quantizer.quantize(program, inputs, ExportFormat.ONNX)
    return quantized, {
        "method": "onnxruntime dynamic int8 (transformers.exporters OnnxRuntimeQuantizer)",
        "per_channel": per_channel,
        "weights": "QInt8 (symmetric)",
        "activations": "QUInt8 (quantized at run time)",
        "operators": "onnxruntime defaults (IntegerOps registry); MatMuls of two activations stay fp32",
        "fp32_layers": {"patterns": list(fp32_layers), "matmuls": len(chosen)},
    }
