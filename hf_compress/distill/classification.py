"""Classifier students: detection and dataset preparation (logits per example, no shift)."""

from __future__ import annotations

from datasets import Dataset
from torch import nn

from .heads import unwrap_peft

CLASSIFIER_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def is_classifier(model: nn.Module | str) -> bool:
    """Whether ``model`` is a sequence classifier (``*ForSequenceClassification``)."""
    if isinstance(model, str):
        return False
    return type(unwrap_peft(model)).__name__.endswith("ForSequenceClassification")


def prepare_classification_dataset(
    dataset: Dataset | None, tokenizer, text_field: str = "text", max_length: int | None = 512
) -> Dataset | None:
    """Tokenize ``text_field`` (or ``sentence``) and name the class column ``labels``.

    A dataset that already has ``input_ids`` is only renamed/filtered. Returns the columns of
    :data:`CLASSIFIER_COLUMNS` that exist.
    """
    if dataset is None:
        return None
    if "label" in dataset.column_names and "labels" not in dataset.column_names:
        dataset = dataset.rename_column("label", "labels")
    if "input_ids" not in dataset.column_names:
        field = text_field if text_field in dataset.column_names else "sentence"
        if field not in dataset.column_names:
            raise ValueError(
                f"classification dataset has no {text_field!r} or 'sentence' column: {dataset.column_names}"
            )
        dataset = dataset.map(
            lambda batch: tokenizer(batch[field], truncation=max_length is not None, max_length=max_length),
            batched=True,
            desc="Tokenizing",
        )
    return dataset.select_columns([c for c in CLASSIFIER_COLUMNS if c in dataset.column_names])
