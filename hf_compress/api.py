"""``prune()``: one verb, the config picks the algorithm; in place, returns the model."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from .config import PrunerConfig
from .engine import BlockContext, layer_sequential
from .models.table import arch_spec, decoder_layers
from .models.weights import prunable_modules, set_weight_out_in, weight_out_in
from .pruning.magnitude import magnitude_mask
from .pruning.masks import apply_mask_
from .pruning.schedule import explicit_sparsities, outlier_ratio, owl_sparsities, uniform_sparsities
from .pruning.sparsegpt import HessianStats, sparsegpt_prune
from .pruning.wanda import WandaStats, wanda_mask, wanda_scores
from .report import PruningReport
from .sparsity import sparsity_report

logger = logging.getLogger(__name__)


def prune(
    model: nn.Module,
    config: PrunerConfig,
    dataset: Any = None,
    tokenizer: Any = None,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> nn.Module:
    """Prune ``model`` in place with ``config`` and return it.

    Args:
        dataset: calibration data for Wanda / SparseGPT / OWL: a ``CalibrationSet``, a ``[n, T]`` token
            tensor, texts, a local file or a Hub dataset name (see :mod:`hf_compress.calibration`).
            Falls back to ``config.dataset``.
        tokenizer: needed when ``dataset`` is text (falls back to ``config.tokenizer``).
        device: where to run the calibration (one block at a time); defaults to the model's device.

    The run's :class:`~hf_compress.report.PruningReport` is left on ``model.hf_compress_report``.
    All inputs are checked before any weight changes.
    """
    started = time.perf_counter()
    arch_spec(model)
    targets = select_targets(model, config)
    sparsities = _block_sparsities(config, len(decoder_layers(model)))
    calib = _resolve_calibration(config, dataset, tokenizer) if config.needs_calibration else None
    report = PruningReport.start(model, config, calib)
    if config.schedule == "owl":
        sparsities = _owl_schedule(model, config, targets, calib, device, progress, report)
    if config.method == "magnitude":
        _prune_magnitude(config, targets, sparsities, report)
    else:
        _prune_calibrated(model, config, targets, sparsities, calib, device, progress, report)
    report.finish(sparsity_report(model), time.perf_counter() - started)
    model.hf_compress_report = report
    logger.info("pruned %s: %s", config.method, report.summary())
    return model


def select_targets(model: nn.Module, config: PrunerConfig) -> list[dict[str, nn.Module]]:
    """Per decoder block, the ``{full name: module}`` to prune; errors if nothing matches."""
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    per_block = [
        prunable_modules(layer, config.targets, config.ignore, prefix=f"{prefix}.{i}.")
        for i, layer in enumerate(layers)
    ]
    if not any(per_block):
        example = ", ".join(list(prunable_modules(layers[0], prefix=f"{prefix}.0."))[:4])
        raise ValueError(
            f"targets={config.targets!r} / ignore={config.ignore!r} match no prunable module "
            f"(regexes over full names such as {example})"
        )
    if config.nm:
        _check_nm_shapes(per_block, config.nm)
    return per_block


def _check_nm_shapes(per_block, nm) -> None:
    for modules in per_block:
        for name, module in modules.items():
            cols = weight_out_in(module).shape[1]
            if cols % nm[1]:
                raise ValueError(f"{name} has in_features={cols}, not divisible by M={nm[1]} of pattern {nm[0]}:{nm[1]}")


def _block_sparsities(config: PrunerConfig, n_blocks: int) -> list[float]:
    if config.layer_sparsity is not None:
        return explicit_sparsities(config.layer_sparsity, n_blocks)
    return uniform_sparsities(n_blocks, config.sparsity)


def _resolve_calibration(config: PrunerConfig, dataset, tokenizer):
    from .calibration import calibration_windows

    dataset = config.dataset if dataset is None else dataset
    tokenizer = config.tokenizer if tokenizer is None else tokenizer
    if dataset is None:
        raise ValueError(
            f"method={config.method!r} (schedule={config.schedule!r}) needs calibration data: pass dataset=... "
            "(texts, a file, a Hub dataset name or a [n, T] token tensor)"
        )
    return calibration_windows(tokenizer, dataset, seqlen=config.seqlen, n_windows=config.n_samples, seed=config.seed)


def _prune_magnitude(config, targets, sparsities, report) -> None:
    for block, modules in enumerate(targets):
        for name, module in modules.items():
            tic = time.perf_counter()
            mask = magnitude_mask(weight_out_in(module), sparsities[block], config.nm, config.group)
            with torch.no_grad():
                apply_mask_(weight_out_in(module), mask)
            report.add_module(name, seconds=time.perf_counter() - tic)


def _prune_calibrated(model, config, targets, sparsities, calib, device, progress, report) -> None:
    stats_class = HessianStats if config.method == "sparsegpt" else WandaStats

    def make_stats(_name, module):
        return stats_class(weight_out_in(module).shape[1], device=module.weight.device)

    def process_module(ctx: BlockContext, name: str) -> None:
        module, stats = ctx.modules[name], ctx.stats[name]
        tic = time.perf_counter()
        if config.method == "sparsegpt":
            result = sparsegpt_prune(
                weight_out_in(module), stats.hessian(), sparsities[ctx.index], config.nm,
                config.block_size, config.damping,
            )
            set_weight_out_in(module, result.weight)
            extra = {"loss": result.loss, "damping": result.damping, "cholesky_retries": result.cholesky_retries}
        else:
            mask = wanda_mask(weight_out_in(module), stats, sparsities[ctx.index], config.nm)
            with torch.no_grad():
                apply_mask_(weight_out_in(module), mask)
            extra = {}
        report.add_module(name, seconds=time.perf_counter() - tic, tokens=stats.tokens,
                          shared_stats_with=ctx.shared.get(name), **extra)

    def process_block(ctx: BlockContext) -> None:
        for name in ctx.modules:
            process_module(ctx, name)

    by_module = config.sequential == "module"
    layer_sequential(
        model, calib.input_ids, calib.attention_mask,
        select_modules=lambda i, _block: targets[i], make_stats=make_stats,
        process_block=None if by_module else process_block, process_module=process_module if by_module else None,
        batch_size=config.batch_size, device=device, progress=progress, description=f"{config.method}",
    )


def _owl_schedule(model, config, targets, calib, device, progress, report) -> list[float]:
    """OWL pre-pass: outlier ratios from Wanda scores of the dense model, then per-block sparsities."""
    lod = [0.0] * len(targets)

    def process_block(ctx: BlockContext) -> None:
        counts = [outlier_ratio(wanda_scores(weight_out_in(m), ctx.stats[n].sq_norm), config.owl_threshold)
                  for n, m in ctx.modules.items()]
        lod[ctx.index] = sum(c for c, _ in counts) / max(sum(t for _, t in counts), 1)

    layer_sequential(
        model, calib.input_ids, calib.attention_mask,
        select_modules=lambda i, _block: targets[i],
        make_stats=lambda _n, m: WandaStats(weight_out_in(m).shape[1], device=m.weight.device),
        process_block=process_block, batch_size=config.batch_size, device=device, progress=progress,
        description="owl outliers",
    )
    sparsities = owl_sparsities(lod, config.sparsity, config.owl_lambda)
    report.schedule = {"outlier_ratio": lod, "sparsity": sparsities}
    return sparsities

