"""Structured importance: scores per attention head, KV group, FFN neuron, hidden channel and block.

Pure tensor functions over the coupling maps of :mod:`hf_compress.models.surgery` (which rows and
columns of which tensors belong to one unit). Criteria:

* ``magnitude_l1`` / ``magnitude_l2``: the L1 / L2 norm of all weights coupled to a unit (the
  dependency groups of LLM-Pruner: Ma, Fang, Wang 2023, "LLM-Pruner: On the Structural Pruning of
  Large Language Models").
* ``taylor``: LLM-Pruner's first-order element-wise Taylor importance, ``sum |w * dL/dw|`` over the
  unit's coupled weights (sec. 3.2, eq. 4 with the first-order term and sum aggregation); the
  gradient is of the language-modelling loss on a few calibration windows.
* ``activation``: Minitron (Muralidharan et al. 2024, "Compact Language Models via Pruning and
  Knowledge Distillation", sec. 2.2): a head scores the norm of its attention output (the head's
  slice of the output projection's input), a neuron its activation (the down projection's input),
  a hidden channel the normalized hidden states that the blocks read (the input of every attention
  and FFN reader, i.e. the LayerNorm outputs), each aggregated as the root mean square over
  calibration tokens and, for hidden channels, summed over blocks.
* ``random``: seeded uniform scores (the baseline).

Blocks are ranked by block influence (ShortGPT: Men et al. 2024, "ShortGPT: Layers in Large
Language Models are More Redundant Than You Expect", eq. 1): ``BI_i = 1 - E_t cos(x_i,t, x_i+1,t)``
over the tokens ``t`` entering and leaving block ``i``; a low BI means the block changes little.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..engine import BlockContext, layer_sequential
from ..models.surgery import (
    Coupling,
    attention_couplings,
    block_shape,
    ffn_couplings,
    hidden_couplings,
    hidden_width,
)
from ..models.table import arch_spec, decoder_layers
from ..models.weights import weight_out_in
from .wanda import WandaStats

CRITERIA = ("magnitude_l1", "magnitude_l2", "activation", "taylor", "random")


def element_scores(weight: torch.Tensor, criterion: str, grad: torch.Tensor | None = None) -> torch.Tensor:
    """Per-element score in float64: ``|w|`` (L1), ``w^2`` (L2, rooted after summing) or ``|w * g|``."""
    w = weight.detach().double()
    if criterion == "magnitude_l1":
        return w.abs()
    if criterion == "magnitude_l2":
        return w.pow(2)
    if criterion == "taylor":
        if grad is None:
            raise ValueError("taylor importance needs the gradient of every coupled weight")
        return (w * grad.detach().double()).abs()
    raise ValueError(
        f"criterion={criterion!r} is not a weight criterion; allowed: magnitude_l1, magnitude_l2, taylor"
    )


def along(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of ``scores`` over every dimension but ``dim``: ``[size of dim]``."""
    return scores.movedim(dim, 0).reshape(scores.shape[dim], -1).sum(dim=1)


def weight_unit_scores(couplings: Sequence[Coupling], n_units: int, criterion: str) -> torch.Tensor:
    """``[n_units]`` float64 scores of a weight criterion aggregated over the coupled tensors.

    Every parameter element lying on a unit's index adds its element score to the unit; for
    ``magnitude_l2`` the sum of squares is rooted at the end (the group's L2 norm). ``taylor`` reads
    each parameter's ``.grad``.
    """
    total = torch.zeros(n_units, dtype=torch.float64)
    for coupling in couplings:
        for param, dim in coupling.tensors():
            grad = param.grad if criterion == "taylor" else None
            per_index = along(element_scores(param, criterion, grad), dim).cpu()
            keep = coupling.units >= 0
            total.index_add_(0, coupling.units[keep], per_index[keep])
    return total.sqrt() if criterion == "magnitude_l2" else total


def activation_unit_scores(
    sq_norm: torch.Tensor, tokens: int, units: torch.Tensor, n_units: int
) -> torch.Tensor:
    """Root mean square over tokens of each unit's activations (channels summed within a unit).

    Args:
        sq_norm: ``[channels]`` sum over tokens of squared activations.
        units: ``[channels]`` unit id of each channel (``-1``: none).
    """
    total = torch.zeros(n_units, dtype=torch.float64)
    keep = units >= 0
    total.index_add_(0, units[keep], sq_norm.detach().double().cpu()[keep])
    return (total / max(tokens, 1)).sqrt()


def attention_scores(
    unit_scores: torch.Tensor, num_heads: int, num_kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split attention-unit scores into ``(query heads [H], KV groups [KV])``.

    A KV group's score is its own K/V weights' score plus the scores of the query heads reading it
    (removing a group removes them all). Units ``0..H-1`` are query heads, ``H..H+KV-1`` KV heads.
    """
    heads = unit_scores[:num_heads]
    per_group = num_heads // num_kv_heads
    groups = heads.reshape(num_kv_heads, per_group).sum(dim=1)
    if unit_scores.numel() > num_heads:
        groups = groups + unit_scores[num_heads : num_heads + num_kv_heads]
    return heads, groups


def random_scores(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


# ----------------------------------------------------------------------------- block influence


def cosine_sum(
    x_in: torch.Tensor, x_out: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[float, int]:
    """``(sum of per-token cosines, token count)`` between ``[..., D]`` states (``mask``: 1 = real token)."""
    a, b = x_in.reshape(-1, x_in.shape[-1]).double(), x_out.reshape(-1, x_out.shape[-1]).double()
    if mask is not None:
        keep = mask.reshape(-1).bool()
        a, b = a[keep], b[keep]
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)
    return float(cos.sum()), int(cos.numel())


def block_influence(cos_sums: Sequence[float], counts: Sequence[int]) -> torch.Tensor:
    """``[L]`` block influence ``1 - mean cosine`` from per-block sums and counts."""
    sums = torch.tensor(cos_sums, dtype=torch.float64)
    n = torch.tensor(counts, dtype=torch.float64).clamp(min=1)
    return 1.0 - sums / n


# ----------------------------------------------------------------------------- selection


def top_units(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, in increasing index order (ties: lower index wins)."""
    if not 0 <= k <= scores.numel():
        raise ValueError(f"cannot keep {k} of {scores.numel()} units")
    order = torch.argsort(-scores.double(), stable=True)[:k]
    return sorted(int(i) for i in order)


def select_heads(
    head_scores: torch.Tensor, group_scores: torch.Tensor, keep_groups: int, keep_per_group: int
) -> list[int]:
    """Query heads to keep: the best ``keep_groups`` KV groups, and in each its best ``keep_per_group`` heads.

    Every kept group keeps the same number of heads, so ``heads / kv_heads`` stays an integer.
    """
    n_groups = group_scores.numel()
    per_group = head_scores.numel() // n_groups
    if not 1 <= keep_per_group <= per_group:
        raise ValueError(f"keep_per_group={keep_per_group} must be in [1, {per_group}]")
    kept = []
    for g in top_units(group_scores, keep_groups):
        local = top_units(head_scores[g * per_group : (g + 1) * per_group], keep_per_group)
        kept += [g * per_group + h for h in local]
    return kept


def allocate(
    scores: Sequence[torch.Tensor], total_keep: int, minimum: int = 1, multiple: int = 1
) -> list[int]:
    """How many units each layer keeps when the ``total_keep`` best units are chosen across layers.

    Each layer keeps at least ``minimum``; counts are then rounded to a ``multiple`` (never below it
    nor above the layer's size), so the total may differ from ``total_keep`` by the rounding.
    """
    sizes = [s.numel() for s in scores]
    if not sum(min(minimum, n) for n in sizes) <= total_keep <= sum(sizes):
        raise ValueError(
            f"cannot keep {total_keep} units over layers of sizes {sizes} with {minimum} per layer"
        )
    counts = [min(minimum, n) for n in sizes]
    rest = [torch.sort(s.double(), descending=True).values[c:] for s, c in zip(scores, counts, strict=True)]
    pool = torch.cat(rest) if rest else torch.zeros(0)
    owner = torch.cat([torch.full((r.numel(),), i) for i, r in enumerate(rest)])
    extra = total_keep - sum(counts)
    if extra > 0:
        for i in owner[torch.argsort(-pool, stable=True)[:extra]].tolist():
            counts[i] += 1
    if multiple > 1:
        counts = [
            min(max(multiple, round(c / multiple) * multiple), n) for c, n in zip(counts, sizes, strict=True)
        ]
    return counts


def rank_slices(head_scores: torch.Tensor, num_kv_heads: int, kept_groups: Sequence[int]) -> torch.Tensor:
    """``[H / KV]`` scores of keeping ``r + 1`` heads per group rather than ``r``: the sum over kept groups
    of each group's ``(r + 1)``-th best head (the unit of per-layer query-head allocation)."""
    per_group = head_scores.numel() // num_kv_heads
    ranked = head_scores.reshape(num_kv_heads, per_group)[list(kept_groups)]
    return torch.sort(ranked.double(), dim=1, descending=True).values.sum(dim=0)


# ----------------------------------------------------------------------------- collecting scores


@dataclass
class StructureScores:
    """Importance of every unit of one model (higher = more important), per structure.

    Attributes:
        heads, kv_groups, ffn: per block ``[H]``, ``[KV]``, ``[F]`` (``None`` when not computed).
        hidden: ``[D]``; layers: ``[L]``.
    """

    criterion: str
    heads: list[torch.Tensor] | None = None
    kv_groups: list[torch.Tensor] | None = None
    ffn: list[torch.Tensor] | None = None
    hidden: torch.Tensor | None = None
    layers: torch.Tensor | None = None


def importance_scores(
    model: nn.Module,
    criterion: str,
    targets: Sequence[str],
    *,
    calib: Any = None,
    seed: int = 0,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> StructureScores:
    """Scores of the units of ``targets`` (heads, kv_groups, ffn, hidden, layers) under ``criterion``.

    ``calib`` (a :class:`~hf_compress.calibration.CalibrationSet`) is needed for ``activation`` and
    ``taylor``. ``device`` is where the layer-sequential activation pass runs (one block at a time);
    the gradient and block-influence passes run the whole model where it is. The model's weights are
    not changed; gradients are cleared afterwards.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r} is not one of {list(CRITERIA)}")
    kinds = _kinds(targets)
    if criterion == "random":
        return _random_scores(model, kinds, seed)
    if criterion in ("activation", "taylor") and calib is None:
        raise ValueError(f"criterion={criterion!r} needs calibration windows (calib=...)")
    if criterion == "activation":
        scores = _activation_scores(model, kinds, calib, batch_size, device, progress)
        if "layers" in kinds:
            scores.layers = block_influence_scores(model, calib, batch_size, progress)
        return scores
    if criterion == "magnitude_l1" or criterion == "magnitude_l2":
        return _weight_scores(model, kinds, criterion)
    with _gradients(model, calib, batch_size, progress):
        return _weight_scores(model, kinds, criterion)


def _kinds(targets: Sequence[str]) -> set[str]:
    kinds = set(targets)
    if kinds & {"heads", "kv_groups"}:
        kinds |= {"heads", "kv_groups"}
    return kinds


def _random_scores(model: nn.Module, kinds: set[str], seed: int) -> StructureScores:
    gen = torch.Generator().manual_seed(seed)
    spec, layers = arch_spec(model), decoder_layers(model)
    shapes = [block_shape(b, spec) for b in layers]
    out = StructureScores("random")
    if "heads" in kinds:
        out.heads = [random_scores(s.num_heads, gen) for s in shapes]
        out.kv_groups = [random_scores(s.num_kv_heads, gen) for s in shapes]
    if "ffn" in kinds:
        out.ffn = [random_scores(s.ffn, gen) for s in shapes]
    if "hidden" in kinds:
        out.hidden = random_scores(hidden_width(model), gen)
    if "layers" in kinds:
        out.layers = random_scores(len(layers), gen)
    return out


def _weight_scores(model: nn.Module, kinds: set[str], criterion: str) -> StructureScores:
    layers = decoder_layers(model)
    out = StructureScores(criterion)
    if "heads" in kinds:
        out.heads, out.kv_groups = [], []
        for i in range(len(layers)):
            couplings, shape = attention_couplings(model, i)
            units = weight_unit_scores(couplings, shape.num_heads + shape.num_kv_heads, criterion)
            heads, groups = attention_scores(units, shape.num_heads, shape.num_kv_heads)
            out.heads.append(heads)
            out.kv_groups.append(groups)
    if "ffn" in kinds:
        out.ffn = []
        for i in range(len(layers)):
            couplings = ffn_couplings(model, i)
            out.ffn.append(weight_unit_scores(couplings, couplings[0].units.numel(), criterion))
    if "hidden" in kinds:
        out.hidden = weight_unit_scores(hidden_couplings(model), hidden_width(model), criterion)
    if "layers" in kinds:
        out.layers = torch.stack([_block_weight_score(block, criterion) for block in layers])
    return out


def _block_weight_score(block: nn.Module, criterion: str) -> torch.Tensor:
    total = sum(element_scores(p, criterion, p.grad).sum() for p in block.parameters())
    return total.sqrt() if criterion == "magnitude_l2" else total


@contextlib.contextmanager
def _gradients(model: nn.Module, calib: Any, batch_size: int, progress: bool) -> Iterator[None]:
    """Hold in every parameter's ``.grad`` the gradient of the mean next-token loss over ``calib``.

    Padding is excluded from the loss (label -100); each batch's loss is weighted by its share of the
    predicted tokens, so the sum is the mean over all windows. Gradients are cleared on exit and
    ``requires_grad`` / training mode restored.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    run_device = params[0].device  # a whole-model pass: where the model is
    labels = calib.input_ids.masked_fill(calib.attention_mask == 0, -100)
    total = max(int((labels[:, 1:] != -100).sum()), 1)
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            batches = range(0, len(calib.input_ids), batch_size)
            for start in tqdm(batches, desc="taylor gradients", disable=not progress, unit="batch"):
                sl = slice(start, start + batch_size)
                lab = labels[sl].to(run_device)
                out = model(
                    input_ids=calib.input_ids[sl].to(run_device),
                    attention_mask=calib.attention_mask[sl].to(run_device),
                    labels=lab,
                    use_cache=False,
                )
                (out.loss * (int((lab[:, 1:] != -100).sum()) / total)).backward()
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.grad = None
            p.requires_grad_(flag)
        model.train(was_training)


def _activation_scores(model, kinds, calib, batch_size, device, progress) -> StructureScores:
    """Minitron activation scores from one layer-sequential pass (weights unchanged)."""
    spec, layers = arch_spec(model), decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    out = StructureScores("activation")
    n = len(layers)
    heads, groups, ffn = [None] * n, [None] * n, [None] * n
    hidden = torch.zeros(hidden_width(model), dtype=torch.float64)
    readers = (*spec.attention_inputs, *spec.ffn_inputs)

    def select(i: int, block: nn.Module) -> dict[str, nn.Module]:
        paths = ([spec.o] if "heads" in kinds else []) + ([spec.down] if "ffn" in kinds else [])
        paths += list(readers) if "hidden" in kinds else []
        return {f"{prefix}.{i}.{p}": block.get_submodule(p) for p in paths}

    def process(ctx: BlockContext) -> None:
        i, name = ctx.index, f"{prefix}.{ctx.index}."
        if "heads" in kinds:
            couplings, shape = attention_couplings(model, i)
            stats = ctx.stats[name + spec.o]
            units = activation_unit_scores(
                stats.sq_norm, stats.tokens, couplings[-1].units, shape.num_heads + shape.num_kv_heads
            )
            heads[i], groups[i] = attention_scores(units, shape.num_heads, shape.num_kv_heads)
        if "ffn" in kinds:
            stats = ctx.stats[name + spec.down]
            ffn[i] = activation_unit_scores(
                stats.sq_norm, stats.tokens, torch.arange(stats.sq_norm.numel()), stats.sq_norm.numel()
            )
        if "hidden" in kinds:
            for owner in sorted({ctx.shared.get(name + p, name + p) for p in readers}):
                stats = ctx.stats[owner]
                hidden.add_((stats.sq_norm.double().cpu() / max(stats.tokens, 1)).sqrt())

    layer_sequential(
        model,
        calib.input_ids,
        calib.attention_mask,
        select_modules=select,
        make_stats=lambda _name, m: WandaStats(weight_out_in(m).shape[1], device=m.weight.device),
        process_block=process,
        batch_size=batch_size,
        device=device,
        progress=progress,
        description="activation importance",
    )
    if "heads" in kinds:
        out.heads, out.kv_groups = heads, groups
    if "ffn" in kinds:
        out.ffn = ffn
    if "hidden" in kinds:
        out.hidden = hidden
    return out


@torch.no_grad()
def block_influence_scores(
    model: nn.Module, calib: Any, batch_size: int = 1, progress: bool = True
) -> torch.Tensor:
    """``[L]`` block influence of every block over the calibration windows (padding excluded).

    Uses the hidden states transformers records at each block boundary, with the last one taken
    before the final norm (``config.tie_last_hidden_states = False`` for the call).
    """
    layers = decoder_layers(model)
    run_device = next(model.parameters()).device  # a whole-model pass: where the model is
    sums, counts = [0.0] * len(layers), [0] * len(layers)
    config = model.config
    had, old = hasattr(config, "tie_last_hidden_states"), getattr(config, "tie_last_hidden_states", None)
    config.tie_last_hidden_states = False
    try:
        batches = range(0, len(calib.input_ids), batch_size)
        for start in tqdm(batches, desc="block influence", disable=not progress, unit="batch"):
            ids = calib.input_ids[start : start + batch_size].to(run_device)
            mask = calib.attention_mask[start : start + batch_size].to(run_device)
            states = model(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False
            ).hidden_states
            if len(states) != len(layers) + 1:
                raise RuntimeError(f"expected {len(layers) + 1} hidden states, got {len(states)}")
            for i in range(len(layers)):
                s, c = cosine_sum(states[i], states[i + 1], mask)
                sums[i] += s
                counts[i] += c
    finally:
        if had:
            config.tie_last_hidden_states = old
        else:
            delattr(config, "tie_last_hidden_states")
    return block_influence(sums, counts)
