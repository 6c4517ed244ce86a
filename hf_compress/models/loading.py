"""Load a model by a ``hf-compress fetch`` name, a local folder, or a Hub id."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model(name_or_path: str) -> tuple[str, str]:
    """``(local folder or Hub id, Hub id of the original)``; fetch names are materialized first."""
    from ..fetch import KNOWN_MODELS, fetch_model

    if name_or_path in KNOWN_MODELS:
        return str(fetch_model(name_or_path)), KNOWN_MODELS[name_or_path].hub_id
    _check_exists(str(name_or_path), sorted(KNOWN_MODELS))
    return name_or_path, _base_id(name_or_path)


def _check_exists(name_or_path: str, known: list[str]) -> None:
    """Refuse a local path that does not exist, or a near miss of a fetch name, before any download."""
    if Path(name_or_path).exists():
        return
    known_text = ", ".join(known)
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise FileNotFoundError(
            f"model={name_or_path!r}: no such folder. Give an existing model folder, a Hub id, "
            f"or a fetch name ({known_text})"
        )
    close = difflib.get_close_matches(name_or_path, known, n=1, cutoff=0.8)
    if close:
        raise ValueError(f"model={name_or_path!r} is not a fetch name; did you mean {close[0]!r}? ({known_text})")


def _base_id(name_or_path: str) -> str:
    """The Hub id a local folder came from, when a previous run recorded it."""
    report = Path(name_or_path) / "compression_report.json"
    if report.is_file():
        import json

        return json.loads(report.read_text()).get("base_model", name_or_path)
    marker = Path(name_or_path) / "hf_compress_fetch.json"
    if marker.is_file():
        import json

        return json.loads(marker.read_text()).get("hub_id", name_or_path)
    return name_or_path


def load_causal_lm(name_or_path: str, dtype: str = "float32") -> tuple[Any, Any, str]:
    """``(model in eval mode, tokenizer, base Hub id)`` for a causal LM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    path, base_id = resolve_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).eval()
    return model, tokenizer, base_id
