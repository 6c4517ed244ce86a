"""The Hub-ready folders a recipe run leaves, and the cards that describe them.

* :func:`write_release`: the PyTorch folder (weights, tokenizer, ``compression_report.json``,
  ``recipe.yaml``, ``README.md``), written atomically; then the ONNX exports the recipe's
  ``export`` stages asked for, each its own folder (``<output_dir>-onnx`` by default) made from the
  released checkpoint itself (see :mod:`hf_compress.stages_export`).
* :func:`card_context` (PyTorch folder) and :func:`export_card_context` (ONNX folder) turn the
  measured figures into a :class:`~hf_compress.hub.CardContext`; it is stored in the report under
  ``"card"`` so ``hf-compress card`` can re-render it later.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from .hub import CardContext, ResultRow, create_model_card, write_model_card
from .portable import save_pretrained_portable

logger = logging.getLogger(__name__)

REPORT_FILE = "compression_report.json"
PPL = "perplexity ↓"
SIZE = "weights (MB)"
PREFILL = "prefill (ms)"
DECODE = "decode (tok/s)"


def write_release(state, report: dict[str, Any]) -> Path:
    """Save the model atomically with its report, recipe and card; then run the pending exports."""
    recipe = state.recipe
    if recipe.card.get("latency"):
        report["latency"] = _pytorch_latency(state.model, recipe.card["latency"])
    ctx = card_context(state, report)
    report["card"] = ctx.to_dict()
    extra = {REPORT_FILE: _dumps(report), "README.md": str(create_model_card(ctx))}
    if recipe.source_text:
        extra["recipe.yaml"] = recipe.source_text
    path = save_pretrained_portable(
        state.model, state.tokenizer, recipe.output_dir, overwrite=recipe.overwrite, extra_files=extra
    )
    _add_sizes(path, report, ctx)
    for stage in _pending_exports(state):
        report.setdefault("exports", []).append(_run_export(state, path, report, stage))
        ctx.steps.append(f"ONNX export: `{report['exports'][-1]['path']}` (see its own card).")
    _rewrite(path, report, ctx)
    return path


def card_context(state, report: dict[str, Any]) -> CardContext:
    """Everything the PyTorch folder's card states, taken from what the run measured."""
    recipe, evals = state.recipe, report["evaluation"]
    sparsity = report["sparsity"]
    rows, eval_results, protocols = [], [], []
    for key, label in (("base", f"{state.base_model_id} (before)"), ("final", f"{recipe.name} (this model)")):
        if key in evals:
            rows.append(ResultRow(label, {PPL: f"{evals[key]['ppl']:.3f}"}))
            protocols.append(protocol_line(evals[key]["protocol"]))
    if "final" in evals:
        eval_results.append(perplexity_eval_result(evals["final"]))
    rows[-1:] = [_with_sparsity(r, sparsity) for r in rows[-1:]]
    if report.get("latency") and rows:
        rows[-1].values |= _latency_values(report["latency"])
        protocols.append(latency_line(report["latency"]))
    settings = recipe.card
    return CardContext(
        model_name=settings.get("model_name", recipe.name),
        base_model=settings.get("base_model", state.base_model_id),
        summary=settings.get("summary", _summary(state, sparsity)),
        relation=settings.get("relation", _relation(state)),
        tags=sorted(set(state.tags + settings.get("tags", []))),
        datasets=settings.get("datasets", []),
        license=settings.get("license"),
        results=rows,
        eval_results=eval_results,
        protocols=list(dict.fromkeys(protocols)),
        compression=_compression_line(sparsity),
        steps=list(state.steps),
        recipe_name=recipe.name,
        recipe_yaml=recipe.source_text.strip() or None,
        command=settings.get("command", f"hf-compress run {recipe.name}.yaml"),
        load_snippet=_load_snippet(settings.get("repo_id", f"<user>/{recipe.name}")),
        load_note=settings.get("load_note", _load_note(state)),
        limitations=_limitations(sparsity) + settings.get("limitations", []),
        versions=report["versions"],
    )


# ----------------------------------------------------------------------------- PyTorch folder helpers


def _relation(state) -> str:
    """``adapter`` for a LoRA-only output (a stage sets ``state.adapter_only``), else ``finetune``."""
    return "adapter" if getattr(state, "adapter_only", False) else "finetune"


def _load_note(state) -> str:
    if getattr(state.model, "hf_quantizer", None) is not None:
        return (
            "The weights are stored in hf-compress's compact format (sparse layouts, losslessly "
            "byte-plane coded): run `import hf_compress` before "
            "`from_pretrained` (transformers>=5.25); plain transformers stops with a message saying so."
        )
    return (
        "The weights are stored dense (zeros included), so plain transformers loads this folder; "
        "`import hf_compress` is not needed."
    )


def _pytorch_latency(model, settings: bool | dict) -> dict[str, Any]:
    from .evaluate import latency

    return latency(model, **(settings if isinstance(settings, dict) else {}))


def _add_sizes(path: Path, report: dict[str, Any], ctx: CardContext) -> None:
    weights = {f.name: f.stat().st_size for f in sorted(path.glob("*.safetensors"))}
    report["files"] = weights
    ctx.files = [ResultRow(name, {"size": human_bytes(size)}) for name, size in weights.items()]
    base = _base_weight_bytes(report.get("model"))
    if ctx.results and weights:
        ctx.results[-1].values[SIZE] = f"{sum(weights.values()) / 1e6:.1f}"
    if base and weights:
        ratio = base / sum(weights.values())
        ctx.compression += (
            f" Weights on disk: {human_bytes(sum(weights.values()))} vs {human_bytes(base)} for the base checkpoint "
            f"({ratio:.2f}x)."
        )


def _base_weight_bytes(model: str | None) -> int | None:
    """On-disk size of the base checkpoint's safetensors, when it is a local folder or fetch name."""
    if not model:
        return None
    try:
        from .models.loading import resolve_model

        folder = Path(resolve_model(model)[0])
    except Exception:  # noqa: BLE001 - a Hub id or a missing cache: the ratio is simply left out
        return None
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    return sum(f.stat().st_size for f in files) or None


def _pending_exports(state) -> list[dict[str, Any]]:
    return [s for s in state.stages if s.get("stage") == "export" and s.get("pending")]


def _run_export(state, release_dir: Path, report: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    from .stages_export import run_pending_export

    result = run_pending_export(state, release_dir, report, stage)
    stage["pending"] = False
    return result


def _rewrite(path: Path, report: dict[str, Any], ctx: CardContext) -> None:
    report["card"] = ctx.to_dict()
    tmp = path / f".{REPORT_FILE}.tmp-{os.getpid()}"
    tmp.write_text(_dumps(report), encoding="utf-8")
    os.replace(tmp, path / REPORT_FILE)
    write_model_card(ctx, path)


def _dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)


def _with_sparsity(row: ResultRow, sparsity: dict[str, Any]) -> ResultRow:
    row.values["decoder sparsity"] = f"{sparsity['total_decoder_sparsity']:.1%}"
    return row


def _summary(state, sparsity: dict[str, Any]) -> str:
    patterns = [p for p, ok in sparsity["patterns"].items() if ok]
    shape = f" in a {patterns[0]} pattern" if patterns and sparsity["total_decoder_sparsity"] > 0.4 else ""
    return (
        f"A compressed version of `{state.base_model_id}`: {sparsity['total_decoder_sparsity']:.1%} of the weights "
        f"of every decoder projection are zero{shape}. Embeddings and the LM head are untouched."
    )


def _compression_line(sparsity: dict[str, Any]) -> str:
    holds = ", ".join(p for p, ok in sparsity["patterns"].items() if ok) or "none"
    return (
        f"{sparsity['total_decoder_sparsity']:.2%} of decoder projection weights are zero "
        f"({sparsity['model_zero_fraction']:.2%} of all parameters); N:M patterns that hold: {holds}."
    )


def _limitations(sparsity: dict[str, Any]) -> list[str]:
    items = [
        "Zeros are stored as ordinary dense weights: the files are as large as the original and plain "
        "PyTorch runs no faster; speed needs sparse kernels (e.g. 2:4 on NVIDIA Ampere+) or a compact format.",
        "Quality was measured only by the perplexity above; check your own tasks before use.",
    ]
    if sparsity["total_decoder_sparsity"] >= 0.5:
        items.append("At 50% sparsity without recovery training the model loses quality versus the base.")
    return items


def _load_snippet(repo_id: str) -> str:
    return (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")'
    )


# ----------------------------------------------------------------------------- shared card pieces


def protocol_line(protocol: dict[str, Any]) -> str:
    """One line that states a perplexity protocol (source, windows, tokens, BOS, dtype)."""
    return (
        f"{short_source(protocol['source'])}: {protocol['n_windows']} non-overlapping windows of {protocol['seqlen']} tokens "
        f"(stride {protocol['stride']}), {protocol['n_tokens']:,} tokens scored, "
        f"{'BOS added' if protocol['add_bos'] else 'no BOS'}, {protocol['dtype']}, ppl = exp(mean token NLL)"
    )


def short_source(source: str) -> str:
    """A data path without the machine-specific part: ``.../wikitext-2/test.txt`` -> ``wikitext-2/test.txt``."""
    parts = Path(source).parts
    return "/".join(parts[-2:]) if Path(source).is_absolute() and len(parts) > 2 else source


def latency_line(latency: dict[str, Any]) -> str:
    """One line that states the latency protocol."""
    return (
        f"latency: batch 1, prefill of {latency['prompt_tokens']} random tokens (median of {latency['repeats']} "
        f"after warm-up), then {latency['new_tokens']} greedy decode steps with the KV cache; "
        f"{latency['device']}, {latency['threads']} threads"
    )


def perplexity_eval_result(final: dict[str, Any], task_type: str = "text-generation") -> EvalResult:
    """A model-index entry for a perplexity result."""
    protocol = final["protocol"]
    return EvalResult(
        task_type=task_type,
        dataset_type="wikitext",
        dataset_name=short_source(protocol["source"]),
        dataset_config="wikitext-2",
        dataset_split="test",
        metric_type="perplexity",
        metric_value=round(final["ppl"], 4),
        metric_name=f"perplexity ({protocol['n_windows']} x {protocol['seqlen']} windows)",
    )


def human_bytes(n: int | float) -> str:
    """``123.4 MB`` style (decimal units, as the Hub shows)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _latency_values(latency: dict[str, Any]) -> dict[str, str]:
    prefill = latency["prefill_ms"]
    return {
        PREFILL: f"{prefill:.0f}" if prefill >= 10 else f"{prefill:.2f}",
        DECODE: f"{latency['decode_tokens_per_s']:.1f}",
    }


# ----------------------------------------------------------------------------- ONNX export card


def export_card_context(report: dict[str, Any], settings: dict[str, Any]) -> CardContext:
    """The card of an ONNX export folder, from its ``export_report.json`` and card ``settings``.

    ``settings``: ``base_model``, ``model_name``, ``repo_id``, ``license``, ``datasets``, ``tags``,
    ``limitations``, ``summary``, ``recipe_name``, ``command`` and ``source_results`` (figures of the
    PyTorch model it was exported from: ``{"name", "ppl", "weights_bytes", "latency", "protocol"}``).
    """
    source = report["source"]
    source_report = report.get("source_report") or {}
    primary = "int8" if "int8" in report["files"] else "fp32"
    base = settings.get("base_model") or source_report.get("base_model") or source.get("base_model")
    rows, protocols, eval_results = _export_rows(report, settings.get("source_results"), primary)
    recipe_name = settings.get("recipe_name", source_report.get("recipe"))
    return CardContext(
        model_name=settings.get("model_name", f"{recipe_name or Path(str(base)).name} (ONNX {primary})"),
        base_model=str(base or "unknown"),
        summary=settings.get("summary", _export_summary(report, base, primary)),
        relation=settings.get("relation", "quantized"),
        tags=sorted(
            {"onnx", "onnxruntime", *(["int8"] if primary == "int8" else []), *settings.get("tags", [])}
        ),
        datasets=settings.get("datasets", []),
        license=settings.get("license"),
        pipeline_tag="text-generation"
        if report["task"].startswith("text-generation")
        else "text-classification",
        results=rows,
        eval_results=eval_results,
        protocols=protocols,
        compression=_export_compression(report, settings.get("source_results"), primary),
        files=[
            ResultRow(e["path"], {"variant": v, "size": human_bytes(e["bytes"])})
            for v, e in report["files"].items()
        ],
        checks=_export_checks(report),
        steps=_export_steps(report),
        recipe_name=recipe_name,
        recipe_yaml=settings.get("recipe_yaml"),
        command=settings.get("command"),
        load_snippet=_export_snippet(report, settings.get("repo_id", "<user>/<repo>"), primary),
        load_note=_export_load_note(report),
        limitations=_export_limitations(report, settings.get("source_results"))
        + settings.get("limitations", []),
        versions=report["versions"]
        | {f"{k} (export env)": v for k, v in (report.get("optimum_versions") or {}).items()},
        report_file="export_report.json",
    )


def _export_rows(report, source_results, primary):
    rows, protocols, eval_results = [], [], []
    if source_results:
        values = {}
        if source_results.get("ppl") is not None:
            values[PPL] = f"{source_results['ppl']:.3f}"
        if source_results.get("weights_bytes"):
            values[SIZE] = f"{source_results['weights_bytes'] / 1e6:.1f}"
        if source_results.get("latency"):
            values |= _latency_values(source_results["latency"])
            protocols.append(f"PyTorch fp32, {latency_line(source_results['latency'])}")
        if source_results.get("protocol"):
            protocols.append(f"PyTorch fp32, {protocol_line(source_results['protocol'])}")
        rows.append(ResultRow(f"{source_results.get('name', 'source')} (PyTorch fp32)", values))
    for variant, entry in report["files"].items():
        values = {
            SIZE: f"{entry['bytes'] / 1e6:.1f}",
            "max abs logit diff": f"{report['parity'][variant]['max_abs_diff']:.3g}",
        }
        evaluation = (report.get("evaluation") or {}).get(variant)
        if evaluation:
            values[PPL] = f"{evaluation['ppl']:.3f}"
            protocols.append(f"ONNX {variant}, {protocol_line(evaluation['protocol'])}")
            if variant == primary:
                eval_results.append(perplexity_eval_result(evaluation))
        latency = (report.get("latency") or {}).get(variant)
        if latency:
            values |= _latency_values(latency)
            protocols.append(f"ONNX {variant}, {latency_line(latency)}")
        label = f"ONNX {variant}" + (" (this model)" if variant == primary else "")
        rows.append(ResultRow(label, values))
    return rows, list(dict.fromkeys(protocols)), eval_results


def _export_summary(report, base, primary) -> str:
    what = (
        "ONNX Runtime dynamic int8 (int8 weights, activations quantized at run time)"
        if primary == "int8"
        else "fp32"
    )
    backend = "Optimum" if report["backend"] == "optimum" else "transformers.exporters"
    recipe = (report.get("source_report") or {}).get("recipe")
    made = f" compressed with the hf-compress recipe `{recipe}`" if recipe else ""
    return f"An ONNX export of `{base}`{made}: exported with {backend}, {what}."


def _export_compression(report, source_results, primary) -> str:
    size = report["files"][primary]["bytes"]
    reference = (source_results or {}).get("weights_bytes") or report["source"]["fp32_bytes"]
    return (
        f"the {primary} graph is {human_bytes(size)}, {reference / size:.2f}x smaller than the fp32 weights "
        f"({human_bytes(reference)})."
    )


def _export_checks(report) -> list[str]:
    lines = []
    cross = report.get("cross_version") or {}
    if cross.get("checked"):
        lines.append(
            f"The checkpoint loads as the same model under transformers {cross['checked_with']['transformers']} "
            f"(Optimum's environment) as under {cross['recorded_with']['transformers']}: token ids equal, argmax "
            f"agreement {cross['argmax_agreement']:.0%}, max |logit diff| {cross['max_abs_diff']:.2g}."
        )
    for variant, parity in report["parity"].items():
        line = f"{variant}: max |logit diff| vs PyTorch {parity['max_abs_diff']:.3g}"
        if "argmax_agreement" in parity:
            line += f", next-token argmax agreement {parity['argmax_agreement']:.1%}"
        gens = parity.get("generation") or []
        if gens:
            same = sum(g["equal"] for g in gens)
            line += f"; greedy generation through ONNX Runtime identical to PyTorch for {same}/{len(gens)} prompts"
        lines.append(line + ".")
    return lines


def _export_steps(report) -> list[str]:
    steps = [
        f"Exported with {'Optimum `main_export`' if report['backend'] == 'optimum' else '`transformers.exporters.OnnxExporter`'} "
        f"(task `{report['task']}`)."
    ]
    quant = report.get("quantization")
    if quant:
        steps.append(
            f"Quantized with {quant['method']}: weights {quant['weights']}, activations {quant['activations']}, "
            f"per-channel={quant['per_channel']}"
            + (f", target {quant['arch']}" if quant.get("arch") else "")
            + "."
        )
        kept = [quant.get("not_quantized")]
        layers = quant.get("fp32_layers") or {}
        if layers.get("patterns"):
            kept.append(f"{layers['matmuls']} MatMuls matching {layers['patterns']} stay fp32")
        steps += [f"Not quantized: {'; '.join(k for k in kept if k)}."] if any(kept) else []
    return steps


def _export_snippet(report, repo_id: str, primary: str) -> str:
    file = report["files"][primary]["path"]
    if report["backend"] == "optimum":
        cls = (
            "ORTModelForCausalLM"
            if report["task"].startswith("text-generation")
            else "ORTModelForSequenceClassification"
        )
        return (
            f"from optimum.onnxruntime import {cls}\nfrom transformers import AutoTokenizer\n\n"
            f'model = {cls}.from_pretrained("{repo_id}", file_name="{file}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")'
        )
    sub = ', subfolder="int8"' if primary == "int8" else ""
    return (
        "from transformers.exporters import ExportedModel\n\n"
        f'model = ExportedModel.from_pretrained("{repo_id}"{sub})  # transformers>=5.20, onnxruntime\n\n'
        "# greedy generation with the KV cache (a local clone of the repo):\n"
        "from hf_compress.onnx_session import OnnxCausalLM\n"
        f'lm = OnnxCausalLM("<local folder>/{file}")'
    )


def _export_load_note(report) -> str:
    if report["backend"] == "optimum":
        return (
            "Needs `optimum-onnx[onnxruntime]` (which pins transformers<4.58); `import hf_compress` is not needed. "
            "The graphs are plain ONNX and also run with `onnxruntime` alone."
        )
    return (
        "Needs transformers>=5.20 with onnxruntime for `ExportedModel`; `import hf_compress` is only needed for "
        "the `OnnxCausalLM` helper (greedy generation with the cache). The graph takes one sequence at a time."
    )


def _export_limitations(report, source_results=None) -> list[str]:
    items = []
    primary = "int8" if "int8" in report["files"] else "fp32"
    onnx_ppl = ((report.get("evaluation") or {}).get(primary) or {}).get("ppl")
    source_ppl = (source_results or {}).get("ppl")
    if primary == "int8" and onnx_ppl and source_ppl and onnx_ppl > 1.05 * source_ppl:
        items.append(
            f"Dynamic int8 raised the perplexity from {source_ppl:.2f} to {onnx_ppl:.2f}. Activation outliers at "
            "the FFN output projections are the usual cause (LLM.int8(), Dettmers et al. 2022): exporting with "
            "`fp32_layers: [down_proj]` keeps those projections fp32 for a larger, more faithful graph."
        )
    if "int8" in report["files"]:
        items.append(
            "Dynamic int8 quantization changes the logits (see the max |logit diff| above); greedy outputs can "
            "differ from the fp32 model after a few tokens."
        )
        items.append(
            "int8 speed-ups need a CPU with int8 dot-product instructions (AVX512-VNNI / AVX-VNNI / ARM dot)."
        )
    if report["backend"] == "transformers":
        items.append("The transformers.exporters graph is traced for batch size 1.")
    return items
