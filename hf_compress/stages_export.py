"""Recipe stages ``quantize`` and ``export``: prune → recover → quantize → export as one recipe.

``quantize`` chooses ONNX Runtime dynamic int8 (the only post-training quantization that ships
here: int8 weights, activations quantized at run time) for the ``export`` stage after it; it does
not touch the PyTorch model. ``export`` writes an ONNX folder (its own Hub repo, relation
``quantized``) from the released checkpoint itself, so it runs after the PyTorch folder is written
(:func:`hf_compress.release.write_release` calls :func:`run_pending_export`), with the recipe's
evaluation protocol for the ONNX perplexity and the final PyTorch figures in its card::

    stages:
      - prune: {method: sparsegpt, pattern: "2:4", dataset: ...}
      - recover: {...}
      - quantize: {method: ort-dynamic-int8, arch: auto, per_channel: true, fp32_layers: [down_proj]}
      - export: {backend: auto, output_dir: outputs/x-onnx-int8, evaluate: true, latency: true}

Wiring (recipes.py): ``"quantize": Stage(validate_quantize, run_quantize)``,
``"export": Stage(validate_export, run_export)``; :func:`check_stage_order` checks a whole list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

QUANT_METHODS = ("ort-dynamic-int8",)
_QUANTIZE_KEYS = {"method", "arch", "per_channel", "fp32_layers", "progress"}
_EXPORT_KEYS = {
    "backend",
    "output_dir",
    "keep_fp32",
    "evaluate",
    "latency",
    "card",
    "opset",
    "parity_atol",
    "generate_tokens",
    "optimum_python",
    "quantize",
    "task",
    "progress",
}
_PPL_KEYS = {
    "dataset",
    "seqlen",
    "max_windows",
    "add_bos",
    "stride",
    "split",
    "text_field",
    "config_name",
    "max_texts",
}


def validate_quantize(params: dict[str, Any]) -> None:
    """Check a ``quantize`` stage's settings (before any model is loaded)."""
    from .export_optimum import ARCHS

    _unknown("quantize", params, _QUANTIZE_KEYS)
    method = params.get("method", QUANT_METHODS[0])
    if method not in QUANT_METHODS:
        raise ValueError(f"quantize: method={method!r} is not supported; allowed: {QUANT_METHODS}")
    arch = params.get("arch", "auto")
    if arch not in ARCHS:
        raise ValueError(f"quantize: arch={arch!r} is not one of {ARCHS}")
    if not isinstance(params.get("per_channel", True), bool):
        raise ValueError(f"quantize: per_channel={params['per_channel']!r} must be true or false")
    from .export import ExportConfig

    try:
        ExportConfig(fp32_layers=params.get("fp32_layers", []))
    except ValueError as err:
        raise ValueError(f"quantize: {err}") from None


def run_quantize(state, params: dict[str, Any]) -> None:
    """Record the int8 scheme for the next ``export`` stage (the PyTorch model is unchanged)."""
    validate_quantize(params)
    if not any("export" in stage for stage in state.recipe.stages[_index_of(state, "quantize") :]):
        raise ValueError("quantize: no `export` stage follows it; int8 applies to the ONNX export, add one")
    defaults = (("method", QUANT_METHODS[0]), ("arch", "auto"), ("per_channel", True), ("fp32_layers", []))
    config = {k: params.get(k, d) for k, d in defaults}
    state.stages.append({"stage": "quantize", "config": config, "applies_to": "the ONNX export"})


def validate_export(params: dict[str, Any]) -> None:
    """Check an ``export`` stage's settings (before any model is loaded)."""
    _unknown("export", params, _EXPORT_KEYS)
    _export_config(params, quantization={"arch": "auto", "per_channel": True})  # a quantize stage may precede
    for key in ("evaluate", "keep_fp32"):
        if not isinstance(params.get(key, True), bool):
            raise ValueError(f"export: {key}={params[key]!r} must be true or false")
    if not isinstance(params.get("latency", False), (bool, dict)):
        raise ValueError(f"export: latency={params['latency']!r} must be true/false or onnx_latency settings")
    if not isinstance(params.get("card", {}), dict):
        raise ValueError(f"export: card={params['card']!r} must be a mapping of card settings")


def run_export(state, params: dict[str, Any]) -> None:
    """Queue the export; it runs from the released folder once that is written."""
    from .portable import check_output_path

    validate_export(params)
    quantization = next((s["config"] for s in reversed(state.stages) if s.get("stage") == "quantize"), None)
    out = params.get("output_dir") or f"{state.recipe.output_dir}-onnx"
    check_output_path(out, state.recipe.overwrite)
    params = {k: v for k, v in params.items() if k != "progress"}
    state.stages.append(
        {
            "stage": "export",
            "config": params,
            "quantization": quantization,
            "output_dir": out,
            "pending": True,
        }
    )


def run_pending_export(
    state, release_dir: Path, report: dict[str, Any], stage: dict[str, Any]
) -> dict[str, Any]:
    """Export ``release_dir`` as the queued ``stage`` asks; return a summary for the run report."""
    from .export import export_onnx

    params, recipe = stage["config"], state.recipe
    config = _export_config(params, stage["quantization"], overwrite=recipe.overwrite)
    evaluation = None
    if params.get("evaluate", True) and recipe.evaluation:
        evaluation = {k: v for k, v in recipe.evaluation.items() if k in _PPL_KEYS}
    result = export_onnx(
        release_dir,
        stage["output_dir"],
        config,
        tokenizer=state.tokenizer,
        evaluation=evaluation,
        latency=params.get("latency", False),
        card=_card_settings(state, report, params),
    )
    rep = result.report
    return {
        "path": str(result.path),
        "backend": rep["backend"],
        "files": {v: e for v, e in rep["files"].items()},
        "max_abs_diff": {v: p["max_abs_diff"] for v, p in rep["parity"].items()},
        "perplexity": {v: e["ppl"] for v, e in (rep.get("evaluation") or {}).items()},
        "latency": rep.get("latency"),
        "seconds": rep["seconds"],
    }


def check_stage_order(stages: list[dict[str, Any]]) -> None:
    """Raise if a ``quantize`` stage has no ``export`` after it, or two quantize stages share one export."""
    kinds = [next(iter(stage)) for stage in stages]
    pending = False
    for i, kind in enumerate(kinds):
        if kind == "quantize":
            if pending:
                raise ValueError(f"stages[{i}]: a second `quantize` before the `export` of the first one")
            pending = True
        elif kind == "export":
            pending = False
    if pending:
        raise ValueError(
            "`quantize` has no `export` stage after it: int8 applies to the ONNX export, add one"
        )


def _export_config(params: dict[str, Any], quantization: dict[str, Any] | None, overwrite: bool = False):
    from .export import ExportConfig

    settings = {
        k: params[k]
        for k in ("backend", "keep_fp32", "opset", "parity_atol", "generate_tokens", "optimum_python", "task")
        if k in params
    }
    quantize = params.get("quantize", "int8" if quantization else None)
    if quantization:
        settings |= {k: quantization[k] for k in ("arch", "per_channel", "fp32_layers") if k in quantization}
    try:
        return ExportConfig(quantize=quantize, overwrite=overwrite, **settings)
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"export: {err}") from err


def _card_settings(state, report: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    recipe, final = state.recipe, report["evaluation"].get("final")
    source = {
        "name": recipe.name,
        "ppl": final["ppl"] if final else None,
        "protocol": final["protocol"] if final else None,
        "weights_bytes": sum((report.get("files") or {}).values()) or None,
        "latency": report.get("latency"),
    }
    settings = {
        "base_model": recipe.card.get("repo_id") or state.base_model_id,
        "tags": sorted(set(state.tags)),
        "datasets": recipe.card.get("datasets", []),
        "license": recipe.card.get("license"),
        "recipe_name": recipe.name,
        "recipe_yaml": recipe.source_text.strip() or None,
        "command": recipe.card.get("command", f"hf-compress run {recipe.name}.yaml"),
        "source_results": source,
    }
    return settings | params.get("card", {})


def _index_of(state, kind: str) -> int:
    kinds = [next(iter(stage)) for stage in state.recipe.stages]
    done = sum(1 for s in state.stages if s.get("stage") == kind)
    positions = [i for i, k in enumerate(kinds) if k == kind]
    return positions[min(done, len(positions) - 1)]


def _unknown(stage: str, params: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"{stage}: unknown setting(s) {unknown}; allowed: {sorted(allowed - {'progress'})}")
