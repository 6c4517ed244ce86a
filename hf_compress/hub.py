"""Model cards from the templates in ``hf_compress/model_cards/`` (``huggingface_hub.ModelCard``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATES = Path(__file__).parent / "model_cards"
RELATIONS = ("adapter", "merge", "quantized", "finetune")


@dataclass
class ResultRow:
    """One row of the results table: a model variant and its measured values by column name."""

    name: str
    values: dict[str, str]


@dataclass
class CardContext:
    """Everything a compressed-model card states. ``eval_results`` become model-index entries."""

    model_name: str
    base_model: str
    summary: str
    relation: str = "finetune"
    tags: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    license: str | None = None
    pipeline_tag: str = "text-generation"
    results: list[ResultRow] = field(default_factory=list)
    eval_results: list[EvalResult] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    compression: str = ""
    steps: list[str] = field(default_factory=list)
    recipe_name: str | None = None
    recipe_yaml: str | None = None
    command: str | None = None
    load_snippet: str = ""
    load_note: str = ""
    limitations: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.relation not in RELATIONS:
            raise ValueError(f"relation={self.relation!r} is not a Hub base_model_relation; allowed: {RELATIONS}")


def create_model_card(ctx: CardContext, template: str | Path | None = None) -> ModelCard:
    """Render the card (YAML metadata + markdown) for ``ctx``; ``template`` overrides the default."""
    data = ModelCardData(
        base_model=ctx.base_model,
        base_model_relation=ctx.relation,
        library_name="transformers",
        license=ctx.license,
        pipeline_tag=ctx.pipeline_tag,
        tags=["hf-compress", *ctx.tags],
        datasets=ctx.datasets or None,
        model_name=ctx.model_name,
        eval_results=ctx.eval_results or None,
    )
    columns = list(dict.fromkeys(col for row in ctx.results for col in row.values))
    path = Path(template) if template else TEMPLATES / "compressed.md.j2"
    return ModelCard.from_template(
        data,
        template_str=path.read_text(encoding="utf-8"),
        result_columns=columns,
        **{k: v for k, v in vars(ctx).items() if k not in ("eval_results",)},
    )
