"""``prune_structured()``: remove whole heads, KV groups, FFN neurons, hidden channels or blocks.

The result is a smaller dense model. When every block ends with the same shapes its config is
plain (smaller dims, explicit ``head_dim``) and reloads with plain ``from_pretrained``; per-layer
shapes are recorded in the report's ``layer_shapes``. Everything about the request and the model
is checked before any importance is computed or any weight changes.

Budget: ``sparsity`` is the fraction of the decoder blocks' parameters to remove. With several
targets, each structure loses the same fraction of its units (heads, KV groups and blocks rounded
to whole units), then the FFN and hidden widths, which are fine-grained, are solved so that the
total meets the budget (hidden rounded to a multiple of the query heads kept, which 5.x Llama
configs require; in families without a ``head_dim`` field, GPT-2 / OPT / BERT, pruning heads and
hidden together keeps ``hidden = heads x head_dim`` so the config stays plain). Without FFN or
hidden targets the whole-unit counts nearest the budget are taken.
``uniform=False`` spends the same number of units, chosen across layers by importance (per-layer
shapes).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models.surgery import (
    LayerShape,
    StructuredPlan,
    apply_plan,
    block_param_count,
    block_shape,
    check_drop_layers,
    decoder_param_count,
    hidden_couplings,
    hidden_width,
    layer_shapes,
)
from .models.table import arch_spec, decoder_layers
from .pruning.structured import (
    CRITERIA,
    StructureScores,
    allocate,
    importance_scores,
    rank_slices,
    select_heads,
    top_units,
)
from .report import library_versions, peak_rss_mib

logger = logging.getLogger(__name__)

TARGETS = ("heads", "kv_groups", "ffn", "hidden", "layers")
_KEEP = {
    "heads": "keep_heads",
    "kv_groups": "keep_kv_heads",
    "ffn": "keep_ffn",
    "hidden": "keep_hidden",
    "layers": "keep_layers",
}
_PER_LAYER = ("keep_heads", "keep_kv_heads", "keep_ffn")
_RUNTIME_ONLY = ("dataset", "tokenizer")


@dataclass
class StructuredConfig:
    """Structured pruning settings; give either ``sparsity`` (+ ``targets``) or explicit ``keep_*`` dims.

    Args:
        targets: what to remove, any of ``"heads"`` (query heads, the same number in every KV group),
            ``"kv_groups"`` (whole KV groups with their query heads), ``"ffn"`` (FFN neurons),
            ``"hidden"`` (residual channels everywhere, Minitron) and ``"layers"`` (whole blocks); a list
            or a comma-separated string. Default with ``sparsity``: ``["heads", "ffn"]``. Without GQA
            (one query head per KV head) ``"heads"`` and ``"kv_groups"`` are the same thing.
        sparsity: fraction of the decoder blocks' parameters to remove, in ``(0, 1)``.
        keep_heads, keep_kv_heads, keep_ffn: query heads / KV heads / FFN neurons each block keeps (an
            int, or one int per block of the input model). ``keep_heads`` must be a multiple of the KV
            heads kept (the GQA ratio stays an integer).
        keep_hidden, keep_layers: residual width and number of blocks to keep.
        importance: ``"magnitude_l1"``, ``"magnitude_l2"``, ``"activation"`` (Minitron; blocks by block
            influence), ``"taylor"`` (LLM-Pruner first order) or ``"random"``.
        uniform: every block keeps the same shapes (plain config); ``False`` chooses units across
            blocks by importance (per-layer shapes; only with ``sparsity``).
        round_to: FFN and hidden widths are rounded to a multiple of this (e.g. 8 or 64).
        n_samples, seqlen, seed, batch_size: calibration windows for ``activation`` / ``taylor``.
        dataset, tokenizer: calibration data (not serialized).
    """

    targets: list[str] | str | None = None
    sparsity: float | None = None
    keep_heads: int | list[int] | None = None
    keep_kv_heads: int | list[int] | None = None
    keep_ffn: int | list[int] | None = None
    keep_hidden: int | None = None
    keep_layers: int | None = None
    importance: str = "taylor"
    uniform: bool = True
    round_to: int = 1
    n_samples: int = 16
    seqlen: int = 512
    seed: int = 0
    batch_size: int = 1
    dataset: Any = None
    tokenizer: Any = None

    def __post_init__(self):
        if self.importance not in CRITERIA:
            raise ValueError(f"importance={self.importance!r} is not one of {list(CRITERIA)}")
        explicit = self._check_keep()
        self.targets = self._check_targets(explicit)
        if self.sparsity is not None and explicit:
            raise ValueError(
                f"give either sparsity={self.sparsity!r} or explicit dims {sorted(explicit)}, not both"
            )
        if self.sparsity is None and not explicit:
            raise ValueError("give sparsity=<fraction of decoder parameters> or explicit keep_* dims")
        if self.sparsity is not None and not (
            isinstance(self.sparsity, (int, float)) and 0.0 < float(self.sparsity) < 1.0
        ):
            raise ValueError(f"sparsity={self.sparsity!r} must be a fraction in (0, 1)")
        if not isinstance(self.uniform, bool):
            raise ValueError(f"uniform={self.uniform!r} must be True or False")
        if not self.uniform and self.sparsity is None:
            raise ValueError(
                "uniform=False spreads a sparsity budget across layers; with explicit dims give per-layer lists"
            )
        for name in ("round_to", "n_samples", "seqlen", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer")

    def _check_keep(self) -> dict[str, Any]:
        explicit = {}
        for target, name in _KEEP.items():
            value = getattr(self, name)
            if value is None:
                continue
            values = value if isinstance(value, list) and name in _PER_LAYER else [value]
            if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
                kind = "an integer >= 1" + (
                    " or a list of them (one per block)" if name in _PER_LAYER else ""
                )
                raise ValueError(f"{name}={value!r} must be {kind}")
            explicit[target] = value
        heads, kv = self.keep_heads, self.keep_kv_heads
        if heads is not None and kv is not None:
            if isinstance(heads, list) and isinstance(kv, list) and len(heads) != len(kv):
                raise ValueError(f"keep_heads has {len(heads)} entries but keep_kv_heads has {len(kv)}")
            pairs = zip(_as_list(heads, kv), _as_list(kv, heads), strict=True)
            bad = [(h, k) for h, k in pairs if h % k]
            if bad:
                raise ValueError(
                    f"keep_heads={heads!r} with keep_kv_heads={kv!r} breaks the GQA ratio at (heads, kv) {bad[0]}: "
                    "query heads must be a multiple of the KV heads kept"
                )
        return explicit

    def _check_targets(self, explicit: dict[str, Any]) -> list[str]:
        targets = self.targets
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        if targets is not None:
            if not isinstance(targets, (list, tuple)) or not targets:
                raise ValueError(f"targets={self.targets!r} must be a non-empty list of {list(TARGETS)}")
            unknown = [t for t in targets if t not in TARGETS]
            if unknown:
                raise ValueError(f"targets={self.targets!r}: {unknown} unknown; allowed: {list(TARGETS)}")
            if explicit and set(targets) != set(explicit):
                raise ValueError(
                    f"targets={list(targets)} disagree with the explicit dims given for {sorted(explicit)}"
                )
        chosen = set(targets or explicit or ("heads", "ffn"))
        return [t for t in TARGETS if t in chosen]

    @property
    def needs_calibration(self) -> bool:
        return self.importance in ("activation", "taylor")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _RUNTIME_ONLY}


def _as_list(value, like) -> list[int]:
    if isinstance(value, list):
        return value
    return [value] * (len(like) if isinstance(like, list) else 1)


# ----------------------------------------------------------------------------- target dims


@dataclass
class TargetDims:
    """Dims every kept block is aimed at (per-layer lists come from explicit ``keep_*`` lists)."""

    kv_heads: int | list[int]
    per_group: int | list[int]
    ffn: int | list[int]
    hidden: int
    layers: int


def _model_dims(model: nn.Module) -> tuple[LayerShape, int, int, bool]:
    spec, layers = arch_spec(model), decoder_layers(model)
    shapes = [block_shape(b, spec) for b in layers]
    return shapes[0], hidden_width(model), len(layers), all(s == shapes[0] for s in shapes)


def _is_gqa(shape: LayerShape) -> bool:
    return shape.num_heads != shape.num_kv_heads


def _round_multiple(value: float, multiple: int, upper: int) -> int:
    """``value`` to the nearest multiple (0 when below one unit; at most ``upper``, which need not be one)."""
    if value < 1:
        return 0
    rounded = max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)
    return rounded if rounded <= upper else upper - upper % multiple or upper


@dataclass
class _Budget:
    """Decoder-parameter count as a function of the kept units (for solving a sparsity budget)."""

    spec: Any
    block: nn.Module
    shape: LayerShape
    counts: dict[str, int]
    tie_hidden: bool  # families without a head_dim field: hidden must stay heads x head_dim

    def dims(self, kept: dict[str, float]) -> dict[str, float]:
        k = {**self.counts, **kept}
        if self.tie_hidden:
            k["hidden"] = k["kv_groups"] * k["heads"] * self.shape.head_dim
        return k

    def removed(self, kept: dict[str, float]) -> float:
        k, c = self.dims(kept), self.counts
        new = LayerShape(k["kv_groups"] * k["heads"], k["kv_groups"], self.shape.head_dim, k["ffn"])
        old = c["layers"] * block_param_count(self.block, self.spec, self.shape, c["hidden"])
        return 1.0 - k["layers"] * block_param_count(self.block, self.spec, new, k["hidden"]) / old

    def solve(self, names: set[str], fixed: dict[str, float], target: float) -> float:
        """The fraction of their units that ``names`` lose (all alike) so that ``target`` is removed."""
        most = self.removed({**fixed, **{t: 0.0 for t in names}})
        if most < target:
            raise ValueError(
                f"sparsity={target} cannot be met: removing every unit of {sorted(names)} removes {most:.1%} "
                "of decoder parameters; add targets (e.g. 'ffn') or lower sparsity"
            )
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            shrunk = {t: self.counts[t] * (1 - mid) for t in names}
            lo, hi = (mid, hi) if self.removed({**fixed, **shrunk}) < target else (lo, mid)
        return hi


def budget_dims(model: nn.Module, config: StructuredConfig) -> TargetDims:
    """Dims meeting ``config.sparsity`` of decoder parameters (see the module docstring).

    Raises:
        ValueError: the budget would leave zero heads, KV groups, neurons, channels or blocks, or the
        targets cannot remove that much.
    """
    spec, block = arch_spec(model), decoder_layers(model)[0]
    shape, width, n_layers, uniform = _model_dims(model)
    if not uniform:
        raise ValueError("a sparsity budget needs blocks of equal shapes; give explicit keep_* dims instead")
    targets = set(config.targets)
    if "heads" in targets and not _is_gqa(shape):
        targets = (targets - {"heads"}) | {"kv_groups"}
    tie = spec.head_dim is None and "hidden" in targets and "kv_groups" in targets
    targets -= {"hidden"} if tie else set()
    counts = {
        "heads": shape.num_heads // shape.num_kv_heads,
        "kv_groups": shape.num_kv_heads,
        "ffn": shape.ffn,
        "hidden": width,
        "layers": n_layers,
    }
    budget = _Budget(spec, block, shape, counts, tie)
    ratio = budget.solve(targets, {}, config.sparsity)
    exact = {t: counts[t] * (1 - ratio) for t in sorted(targets & {"heads", "kv_groups", "layers"})}
    for t, value in exact.items():
        if value < 0.5:
            raise ValueError(_zero_message(config, t, counts[t]))
    fine = targets & {"ffn", "hidden"}
    kept = _fine_dims(budget, config, exact, fine) if fine else _nearest_dims(budget, config, exact)
    k = budget.dims(kept)
    return TargetDims(int(k["kv_groups"]), int(k["heads"]), int(k["ffn"]), int(k["hidden"]), int(k["layers"]))


def _fine_dims(
    budget: _Budget, config: StructuredConfig, exact: dict[str, float], fine: set[str]
) -> dict[str, float]:
    """Whole units nearest ``exact``, then FFN / hidden widths solved to meet the budget and rounded."""
    counts = budget.counts
    kept: dict[str, float] = {t: min(counts[t], math.floor(v + 0.5)) for t, v in exact.items()}
    ratio = budget.solve(fine, kept, config.sparsity) if budget.removed(kept) < config.sparsity else 0.0
    k = budget.dims(kept)
    multiples = {
        "ffn": config.round_to,
        "hidden": math.lcm(config.round_to, int(k["kv_groups"] * k["heads"])),
    }
    for t in sorted(fine):
        kept[t] = _round_multiple(counts[t] * (1 - ratio), multiples[t], counts[t])
        if kept[t] < 1:
            raise ValueError(_zero_message(config, t, counts[t]))
    return kept


def _nearest_dims(budget: _Budget, config: StructuredConfig, exact: dict[str, float]) -> dict[str, float]:
    """Of the whole-unit counts around ``exact``, those whose removed fraction is nearest the budget."""
    choices = [{max(1, math.floor(v)), min(budget.counts[t], math.ceil(v))} for t, v in exact.items()]
    options = [dict(zip(exact, c, strict=True)) for c in itertools.product(*choices)]
    return min(options, key=lambda o: abs(budget.removed(o) - config.sparsity))


def _zero_message(config: StructuredConfig, target: str, count: int) -> str:
    what = {
        "heads": "query heads per KV group",
        "kv_groups": "KV groups (heads) per layer",
        "layers": "blocks",
        "ffn": "FFN neurons per layer",
        "hidden": "hidden channels",
    }[target]
    return (
        f"sparsity={config.sparsity} with targets {config.targets} would leave 0 of {count} {what}; "
        "add targets that can absorb the budget (e.g. 'ffn') or lower sparsity"
    )


def explicit_dims(model: nn.Module, config: StructuredConfig) -> TargetDims:
    """Dims from ``keep_*``, checked against the model (range, GQA ratio, one entry per block)."""
    shape, width, n_layers, _ = _model_dims(model)
    shapes = [block_shape(b, arch_spec(model)) for b in decoder_layers(model)]

    def per_layer(name: str, default: list[int]) -> list[int]:
        value = getattr(config, name)
        if value is None:
            return default
        values = value if isinstance(value, list) else [value] * n_layers
        if len(values) != n_layers:
            raise ValueError(f"{name} has {len(values)} entries but the model has {n_layers} blocks")
        return values

    kv = per_layer("keep_kv_heads", [s.num_kv_heads for s in shapes])
    heads = per_layer(
        "keep_heads", [s.num_heads // s.num_kv_heads * k for s, k in zip(shapes, kv, strict=True)]
    )
    if config.keep_heads is not None and config.keep_kv_heads is None and not _is_gqa(shape):
        kv = list(heads)  # without GQA a head is its own KV group
    ffn = per_layer("keep_ffn", [s.ffn for s in shapes])
    for i, (s, h, k, f) in enumerate(zip(shapes, heads, kv, ffn, strict=True)):
        if k > s.num_kv_heads or h % k or h // k > s.num_heads // s.num_kv_heads:
            raise ValueError(
                f"layer {i}: keep_heads={h}, keep_kv_heads={k} cannot keep the GQA ratio of a block with "
                f"{s.num_heads} query / {s.num_kv_heads} KV heads: keep at most {s.num_kv_heads} KV heads and "
                f"the same whole number (<= {s.num_heads // s.num_kv_heads}) of query heads for each"
            )
        if f > s.ffn:
            raise ValueError(f"layer {i}: keep_ffn={f} exceeds the block's {s.ffn} FFN neurons")
    hidden = config.keep_hidden if config.keep_hidden is not None else width
    layers = config.keep_layers if config.keep_layers is not None else n_layers
    for name, value, limit in (("keep_hidden", hidden, width), ("keep_layers", layers, n_layers)):
        if value > limit:
            raise ValueError(f"{name}={value} exceeds the model's {limit}")
    per_group = [h // k for h, k in zip(heads, kv, strict=True)]
    return TargetDims(kv, per_group, ffn, hidden, layers)


# ----------------------------------------------------------------------------- plan


def make_plan(
    model: nn.Module, config: StructuredConfig, dims: TargetDims, scores: StructureScores
) -> StructuredPlan:
    """Which units to keep: the best by ``scores`` at ``dims`` (or spread across layers if not uniform)."""
    n_layers = len(decoder_layers(model))
    targets = set(config.targets)
    plan = StructuredPlan()
    if "layers" in targets:
        plan.layers = top_units(scores.layers, dims.layers)
    active = plan.layers if plan.layers is not None else list(range(n_layers))
    if targets & {"heads", "kv_groups"}:
        plan.heads = _plan_heads(model, config, dims, scores, active)
    if "ffn" in targets:
        plan.ffn = _plan_ffn(config, dims, scores, active)
    if "hidden" in targets:
        plan.hidden = top_units(scores.hidden, dims.hidden)
    return plan


def _at(value: int | list[int], layer: int) -> int:
    return value[layer] if isinstance(value, list) else value


def _plan_heads(model, config, dims, scores, active) -> dict[int, list[int]]:
    if config.uniform or config.sparsity is None:
        return {
            i: select_heads(
                scores.heads[i], scores.kv_groups[i], _at(dims.kv_heads, i), _at(dims.per_group, i)
            )
            for i in active
        }
    kv_counts = allocate([scores.kv_groups[i] for i in active], dims.kv_heads * len(active))
    groups = {i: top_units(scores.kv_groups[i], k) for i, k in zip(active, kv_counts, strict=True)}
    slices = [rank_slices(scores.heads[i], scores.kv_groups[i].numel(), groups[i]) for i in active]
    per_group = allocate(slices, dims.per_group * len(active))
    return {
        i: select_heads(scores.heads[i], scores.kv_groups[i], k, m)
        for i, k, m in zip(active, kv_counts, per_group, strict=True)
    }


def _plan_ffn(config, dims, scores, active) -> dict[int, list[int]]:
    if config.uniform or config.sparsity is None:
        return {i: top_units(scores.ffn[i], _at(dims.ffn, i)) for i in active}
    multiple = config.round_to
    counts = allocate(
        [scores.ffn[i] for i in active], dims.ffn * len(active), minimum=multiple, multiple=multiple
    )
    return {i: top_units(scores.ffn[i], c) for i, c in zip(active, counts, strict=True)}


# ----------------------------------------------------------------------------- report


@dataclass
class StructuredReport:
    """What one ``prune_structured()`` call did and measured; ``to_dict()`` is JSON-ready.

    Attributes:
        before, after: layers, hidden, heads, KV heads, head_dim, FFN (one value, or one per block) and
            parameter counts (decoder blocks and whole model).
        removed_decoder_fraction, removed_total_fraction: parameters removed, realised.
        uniform: every block has the same shapes; plain_config: plain ``from_pretrained`` rebuilds them
            (``config_problem`` says why not, when the config class rejects the dims).
        layer_shapes: per block ``{"num_heads", "num_kv_heads", "head_dim", "ffn"}`` (what a per-layer
            checkpoint must record; :func:`hf_compress.models.surgery.resize_layers` applies it).
        kept: blocks kept, hidden width kept, query heads kept per block (input numbering).
    """

    config: dict[str, Any]
    model_type: str
    calibration: dict[str, Any] | None
    started_at: str
    before: dict[str, Any]
    after: dict[str, Any] = field(default_factory=dict)
    removed_decoder_fraction: float = 0.0
    removed_total_fraction: float = 0.0
    uniform: bool = True
    plain_config: bool = True
    config_problem: str | None = None
    layer_shapes: list[dict[str, int]] = field(default_factory=list)
    kept: dict[str, Any] = field(default_factory=dict)
    score_seconds: float = 0.0
    seconds: float = 0.0
    peak_rss_mib: float = 0.0
    versions: dict[str, str] = field(default_factory=library_versions)

    def summary(self) -> str:
        b, a = self.before, self.after
        return (
            f"removed {self.removed_decoder_fraction:.2%} of decoder parameters ({self.removed_total_fraction:.2%} of all): "
            f"layers {b['layers']}->{a['layers']}, hidden {b['hidden']}->{a['hidden']}, heads {b['heads']}->{a['heads']}, "
            f"kv {b['kv_heads']}->{a['kv_heads']}, ffn {b['ffn']}->{a['ffn']}; "
            f"{'uniform' if self.uniform else 'per-layer'} shapes, {self.seconds:.1f} s"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        import json

        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return path


def _dims_summary(model: nn.Module) -> dict[str, Any]:
    shapes = layer_shapes(model)

    def one(key: str):
        values = [s[key] for s in shapes]
        return values[0] if len(set(values)) == 1 else values

    return {
        "layers": len(shapes),
        "hidden": hidden_width(model),
        "heads": one("num_heads"),
        "kv_heads": one("num_kv_heads"),
        "head_dim": one("head_dim"),
        "ffn": one("ffn"),
        "decoder_parameters": decoder_param_count(model),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# ----------------------------------------------------------------------------- entry point


def check_request(model: nn.Module, config: StructuredConfig) -> TargetDims:
    """Every check that needs the model, before any work: architecture, criterion, dims, hidden coverage."""
    spec = arch_spec(model)
    if config.importance == "taylor" and (not spec.causal or _lm_head(model) is None):
        raise ValueError(
            f"importance='taylor' needs a causal LM loss; {type(model).__name__} has none "
            "(use 'activation', 'magnitude_l1', 'magnitude_l2' or 'random')"
        )
    dims = budget_dims(model, config) if config.sparsity is not None else explicit_dims(model, config)
    if "hidden" in config.targets:
        hidden_couplings(model)
    if "layers" in config.targets:
        check_drop_layers(model, list(range(dims.layers)))
    return dims


def _lm_head(model: nn.Module):
    get_out = getattr(model, "get_output_embeddings", None)
    return get_out() if callable(get_out) else None


def prune_structured(
    model: nn.Module,
    config: StructuredConfig,
    dataset: Any = None,
    tokenizer: Any = None,
    *,
    scores: StructureScores | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> nn.Module:
    """Structurally prune ``model`` in place with ``config`` and return it (smaller dense weights).

    Args:
        dataset: calibration data for ``activation`` / ``taylor`` (anything
            :func:`hf_compress.calibration.calibration_windows` reads; falls back to ``config.dataset``).
        tokenizer: needed when ``dataset`` is text (falls back to ``config.tokenizer``).
        scores: precomputed :func:`importance_scores` of this very model (skips the calibration).
        device: where calibration runs (one block at a time); defaults to the model's device.

    The :class:`StructuredReport` is left on ``model.hf_compress_report``. All checks run before any
    weight changes.
    """
    started = time.perf_counter()
    dims = check_request(model, config)
    calib = _calibration(config, dataset, tokenizer) if config.needs_calibration and scores is None else None
    before = _dims_summary(model)
    report = StructuredReport(
        config=config.to_dict(),
        model_type=model.config.model_type,
        calibration=calib.provenance() if calib is not None else None,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        before=before,
    )
    tic = time.perf_counter()
    if scores is None:
        scores = importance_scores(
            model,
            config.importance,
            config.targets,
            calib=calib,
            seed=config.seed,
            batch_size=config.batch_size,
            device=device,
            progress=progress,
        )
    report.score_seconds = time.perf_counter() - tic
    plan = make_plan(model, config, dims, scores)
    summary = apply_plan(model, plan)
    report.after = _dims_summary(model)
    report.removed_decoder_fraction = 1 - report.after["decoder_parameters"] / before["decoder_parameters"]
    report.removed_total_fraction = 1 - report.after["parameters"] / before["parameters"]
    report.uniform, report.plain_config = summary["uniform"], summary["plain_config"]
    report.layer_shapes, report.config_problem = summary["layer_shapes"], summary["config_problem"]
    report.kept = {
        "layers": plan.layers,
        "hidden": len(plan.hidden) if plan.hidden is not None else None,
        "heads": {str(k): v for k, v in plan.heads.items()},
    }
    report.seconds = time.perf_counter() - started
    report.peak_rss_mib = peak_rss_mib()
    model.hf_compress_report = report
    logger.info(
        "structured pruning (%s, %s): %s", config.importance, ",".join(config.targets), report.summary()
    )
    if not report.plain_config:
        logger.warning(
            "the pruned shapes are not a plain config (%s); plain from_pretrained cannot rebuild them, "
            "the per-layer shapes are in hf_compress_report.layer_shapes",
            report.config_problem
            or ("per-layer shapes" if not report.uniform else "hidden != heads x head_dim"),
        )
    return model


def _calibration(config: StructuredConfig, dataset, tokenizer):
    from .calibration import calibration_windows

    dataset = config.dataset if dataset is None else dataset
    tokenizer = config.tokenizer if tokenizer is None else tokenizer
    if dataset is None:
        raise ValueError(
            f"importance={config.importance!r} needs calibration data: pass dataset=... "
            "(texts, a file, a Hub dataset name or a [n, T] token tensor)"
        )
    return calibration_windows(
        tokenizer, dataset, seqlen=config.seqlen, n_windows=config.n_samples, seed=config.seed
    )
