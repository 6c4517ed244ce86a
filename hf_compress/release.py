"""The Hub-ready folder a recipe run leaves: weights, tokenizer, report, recipe and model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from .hub import CardContext, ResultRow, create_model_card
from .portable import save_pretrained_portable


def write_release(state, report: dict[str, Any]) -> Path:
    """Save the model atomically with ``compression_report.json``, ``recipe.yaml`` and ``README.md``."""
    recipe = state.recipe
    card = create_model_card(card_context(state, report))
    extra = {
        "compression_report.json": json.dumps(report, indent=2, default=str),
        "README.md": str(card),
    }
    if recipe.source_text:
        extra["recipe.yaml"] = recipe.source_text
    return save_pretrained_portable(
        state.model, state.tokenizer, recipe.output_dir, overwrite=recipe.overwrite, extra_files=extra
    )


def card_context(state, report: dict[str, Any]) -> CardContext:
    """Everything the card states, taken from what the run measured."""
    recipe, evals = state.recipe, report["evaluation"]
    sparsity = report["sparsity"]
    rows, eval_results, protocols = [], [], []
    for key, label in (("base", f"{state.base_model_id} (before)"), ("final", f"{recipe.name} (this model)")):
        if key in evals:
            rows.append(ResultRow(label, {"perplexity ↓": f"{evals[key]['ppl']:.3f}"}))
            protocols.append(_protocol_line(evals[key]["protocol"]))
    if "final" in evals:
        eval_results.append(_eval_result(evals["final"]))
    rows[-1:] = [_with_sparsity(r, sparsity) for r in rows[-1:]]
    settings = recipe.card
    return CardContext(
        model_name=settings.get("model_name", recipe.name),
        base_model=settings.get("base_model", state.base_model_id),
        summary=settings.get("summary", _summary(state, sparsity)),
        relation=settings.get("relation", "finetune"),
        tags=sorted(set(state.tags + settings.get("tags", []))),
        datasets=settings.get("datasets", []),
        license=settings.get("license"),
        results=rows,
        eval_results=eval_results,
        protocols=list(dict.fromkeys(protocols)),
        compression=_compression_line(sparsity),
        steps=state.steps,
        recipe_name=recipe.name,
        recipe_yaml=recipe.source_text.strip() or None,
        command=settings.get("command", f"hf-compress run {recipe.name}.yaml"),
        load_snippet=_load_snippet(settings.get("repo_id", f"<user>/{recipe.name}")),
        load_note=(
            "The weights are stored dense (zeros included), so plain transformers loads this folder; "
            "`import hf_compress` is not needed."
        ),
        limitations=_limitations(sparsity) + settings.get("limitations", []),
        versions=report["versions"],
    )


def _with_sparsity(row: ResultRow, sparsity: dict[str, Any]) -> ResultRow:
    row.values["decoder sparsity"] = f"{sparsity['total_decoder_sparsity']:.1%}"
    return row


def _protocol_line(protocol: dict[str, Any]) -> str:
    return (
        f"{protocol['source']}: {protocol['n_windows']} non-overlapping windows of {protocol['seqlen']} tokens "
        f"(stride {protocol['stride']}), {protocol['n_tokens']:,} tokens scored, "
        f"{'BOS added' if protocol['add_bos'] else 'no BOS'}, {protocol['dtype']}, ppl = exp(mean token NLL)"
    )


def _eval_result(final: dict[str, Any]) -> EvalResult:
    protocol = final["protocol"]
    return EvalResult(
        task_type="text-generation",
        dataset_type="wikitext",
        dataset_name=Path(protocol["source"]).name or protocol["source"],
        dataset_config="wikitext-2",
        dataset_split="test",
        metric_type="perplexity",
        metric_value=round(final["ppl"], 4),
        metric_name=f"perplexity ({protocol['n_windows']} x {protocol['seqlen']} windows)",
    )


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
