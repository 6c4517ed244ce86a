"""The ``prune_structured`` recipe stage: ``validate`` before the model loads, ``run`` on the loaded model.

Recipe form (settings are :class:`~hf_compress.structured.StructuredConfig` fields, plus ``dataset``)::

    stages:
      - prune_structured: {targets: [heads, ffn], sparsity: 0.25, importance: taylor,
                           dataset: "{data}/wikitext-2/valid.txt", n_samples: 16, seqlen: 512}

Register with ``STAGES["prune_structured"] = Stage(validate_prune_structured, run_prune_structured)``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_NOT_CONFIG = ("dataset", "progress")


def _config(params: dict[str, Any]):
    from dataclasses import fields

    from .structured import StructuredConfig

    settings = {k: v for k, v in params.items() if k not in _NOT_CONFIG}
    allowed = {f.name for f in fields(StructuredConfig)} - {"dataset", "tokenizer"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(
            f"prune_structured: unknown setting(s) {unknown}; allowed: {sorted(allowed | {'dataset'})}"
        )
    return StructuredConfig(**settings)


def validate_prune_structured(params: dict[str, Any]) -> None:
    """Check the stage's settings (and that a local calibration file exists) before any model loads."""
    from .recipes import _check_dataset

    config = _config(params)
    if config.needs_calibration:
        _check_dataset(params, "prune_structured")


def run_prune_structured(state, params: dict[str, Any]) -> None:
    """Prune ``state.model`` in place and record the report, tags and a model-card step."""
    from .structured import prune_structured

    progress = params.pop("progress", True)
    dataset = params.pop("dataset", None)
    config = _config(params)
    prune_structured(state.model, config, dataset=dataset, tokenizer=state.tokenizer, progress=progress)
    report = state.model.hf_compress_report
    state.stages.append({"stage": "prune_structured", "config": config.to_dict(), "report": report.to_dict()})
    state.tags += ["pruned", "structured-pruning", config.importance, *config.targets]
    before, after = report.before, report.after
    calib = report.calibration or {}
    on = (
        f", importance from {calib.get('n_windows')} x {calib.get('seqlen')} tokens of {calib.get('source')}"
        if calib
        else ""
    )
    state.steps.append(
        f"Structured pruning of {', '.join(config.targets)} by {config.importance} importance{on}: "
        f"{report.removed_decoder_fraction:.1%} of decoder parameters removed (layers {before['layers']}->{after['layers']}, "
        f"hidden {before['hidden']}->{after['hidden']}, heads {before['heads']}->{after['heads']}, "
        f"KV heads {before['kv_heads']}->{after['kv_heads']}, FFN {before['ffn']}->{after['ffn']})."
    )
    if not report.plain_config:
        logger.warning(
            "prune_structured left per-layer shapes (%s); saving them needs hf_compress's from_pretrained hook",
            report.layer_shapes,
        )
