"""Model cards from the templates in ``hf_compress/model_cards/`` (``huggingface_hub.ModelCard``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
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
    files: list[ResultRow] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    report_file: str = "compression_report.json"

    def __post_init__(self):
        if self.relation not in RELATIONS:
            raise ValueError(
                f"relation={self.relation!r} is not a Hub base_model_relation; allowed: {RELATIONS}"
            )
        if not self.base_model:
            raise ValueError("base_model is empty; give the Hub id of the model this one was made from")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (stored in the run report, so ``hf-compress card`` can re-render the card)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CardContext:
        """Inverse of :meth:`to_dict`; unknown keys raise (naming them)."""
        data = dict(data)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown card field(s) {unknown}")
        data["results"] = [ResultRow(**r) for r in data.get("results", [])]
        data["files"] = [ResultRow(**r) for r in data.get("files", [])]
        data["eval_results"] = [EvalResult(**r) for r in data.get("eval_results", [])]
        return cls(**data)


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


def write_model_card(ctx: CardContext, folder: str | Path, template: str | Path | None = None) -> Path:
    """Render the card into ``folder/README.md`` (written to a temporary file, then renamed)."""
    path = Path(folder) / "README.md"
    tmp = path.with_name(f".README.md.tmp-{os.getpid()}")
    tmp.write_text(str(create_model_card(ctx, template)), encoding="utf-8")
    os.replace(tmp, path)
    return path


def validate_card(path: str | Path) -> list[str]:
    """Problems that would make ``path`` (a README.md) a poor Hub model card; empty when fine.

    Checks what the Hub reads from the YAML header: it parses, ``base_model`` and a valid
    ``base_model_relation`` are set, ``library_name`` and ``pipeline_tag`` are present, and the
    model-index eval results (if any) parse with a metric value.
    """
    path = Path(path)
    if not path.is_file():
        return [f"no model card: {path} does not exist (write one with `hf-compress card`)"]
    try:
        card = ModelCard.load(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is the problem we report
        return [f"{path.name}: the YAML header does not parse ({type(err).__name__}: {err})"]
    data, problems = card.data, []
    base = getattr(data, "base_model", None)
    if not base:
        problems.append("card metadata has no base_model")
    elif any(not _looks_like_hub_id(b) for b in ([base] if isinstance(base, str) else base)):
        problems.append(f"card metadata base_model={base!r} is not a Hub model id (e.g. 'org/name')")
    relation = getattr(data, "base_model_relation", None)
    if relation not in RELATIONS:
        problems.append(f"card metadata base_model_relation={relation!r}; allowed: {RELATIONS}")
    for key in ("library_name", "pipeline_tag"):
        if not getattr(data, key, None):
            problems.append(f"card metadata has no {key}")
    for result in getattr(data, "eval_results", None) or []:
        if result.metric_value is None:
            problems.append(f"eval result {result.metric_name!r} has no value")
    if not card.text.strip():
        problems.append("the card has no text below its metadata")
    return problems


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name
