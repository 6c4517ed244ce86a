"""Pruning during training: gradual magnitude pruning and movement pruning, unstructured or N:M.

Schedule (Zhu & Gupta 2017, "To prune, or not to prune", eq. 1): from ``s_i`` at step ``t0`` to
``s_f`` at step ``t1``::

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3        t0 <= t <= t1

pruning every ``frequency`` optimizer steps and at ``t1``, so the target is reached exactly at
``t1`` and held afterwards.

Scores: magnitude ``|W|``, or movement (Sanh et al. 2020, "Movement Pruning"): ``S = -sum_t
(dL/dW)_t * W_t`` accumulated at every optimizer step; weights moving away from zero score high.
This is hard movement pruning with monotone masks: a pruned weight is set to zero and stays pruned.

N:M: the ``M - N`` lowest scores of every run of ``M`` inputs are the candidates; the ``s_t`` fraction
with the lowest scores among them is pruned, so at ``t1`` (``s_f = 1 - N/M``) every candidate is
pruned and the pattern holds exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..models.weights import Conv1D, weight_out_in
from ..pruning.masks import mask_lowest, mask_nm, parse_pattern
from .masks import SparseMaskCallback, block_modules

logger = logging.getLogger(__name__)

METHODS = ("magnitude", "movement")
GROUPS = ("layer", "row")
SCORES_FILE = "movement_scores.safetensors"


def cubic_sparsity(step: int, *, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta's cubic schedule: ``initial`` up to ``start``, ``final`` from ``end`` on."""
    if step <= start:
        return initial
    if step >= end:
        return final
    frac = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** 3


def movement_update_(scores: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``scores -= weight * grad`` in float32, in place (one step of Sanh et al.'s ``S``)."""
    return scores.sub_(weight.detach().float() * grad.detach().float())


def grow_mask(
    scores: torch.Tensor,
    old: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    group: str = "layer",
) -> torch.Tensor:
    """A mask that contains ``old`` and prunes the ``sparsity`` fraction with the lowest ``scores``.

    Args:
        scores: ``[out, in]`` importance (higher = keep); ``old``: bool ``[out, in]`` already pruned.
        nm: ``(N, M)``: pruned positions are drawn only from each run's ``M - N`` lowest scores
            (``sparsity`` must not exceed ``1 - N/M``).
        group: ``"layer"`` or ``"row"`` (each output row separately).
    Returns:
        bool ``[out, in]``: ``floor(sparsity * group size)`` pruned per group, more only where ``old``
        already had more.
    """
    s = scores.detach().float().masked_fill(old, -math.inf)
    if nm is not None:
        if sparsity > 1 - nm[0] / nm[1] + 1e-9:
            raise ValueError(
                f"sparsity={sparsity} exceeds {1 - nm[0] / nm[1]} allowed by pattern {nm[0]}:{nm[1]}"
            )
        s = s.masked_fill(~mask_nm(s, *nm), math.inf)
    return mask_lowest(s, sparsity, group) | old


class GradualPruningCallback(SparseMaskCallback):
    """Prune while training, to ``sparsity`` exactly at ``end_step``; masks are kept between prunings.

    Args:
        sparsity: final sparsity ``s_f`` in ``(0, 1)``; implied (``1 - N/M``) by an N:M ``pattern``.
        pattern: ``"unstructured"`` or ``"N:M"``.
        start_step, end_step: optimizer steps ``t0 < t1``; ``end_step`` must not exceed the run's
            ``max_steps``. initial_sparsity: ``s_i`` at ``t0``.
        frequency: prune every this many steps between ``t0`` and ``t1`` (and always at ``t1``).
        method: ``"magnitude"`` (Zhu & Gupta) or ``"movement"`` (Sanh et al.).
        group: comparison group, ``"layer"`` or ``"row"``.
        targets, ignore: regexes over full module names; default every linear in the decoder blocks.

    ``history`` lists ``(step, scheduled sparsity, realised sparsity)`` of every pruning. Movement
    scores are written into each checkpoint (``movement_scores.safetensors``) and read back on resume.
    """

    def __init__(
        self,
        sparsity: float | None = None,
        *,
        pattern: str = "unstructured",
        start_step: int = 0,
        end_step: int,
        initial_sparsity: float = 0.0,
        frequency: int = 10,
        method: str = "magnitude",
        group: str = "layer",
        targets: Sequence[str] | None = None,
        ignore: Sequence[str] = (),
    ) -> None:
        super().__init__(targets=targets, ignore=ignore)
        self.nm = parse_pattern(pattern)
        self.final = self._final_sparsity(sparsity, self.nm, pattern)
        _check(method in METHODS, "method", method, ", ".join(METHODS))
        _check(group in GROUPS, "group", group, ", ".join(GROUPS))
        _check(isinstance(start_step, int) and start_step >= 0, "start_step", start_step, "an integer >= 0")
        _check(
            isinstance(end_step, int) and end_step > start_step,
            "end_step",
            end_step,
            f"an integer > start_step={start_step}",
        )
        _check(isinstance(frequency, int) and frequency >= 1, "frequency", frequency, "an integer >= 1")
        _check(
            0.0 <= initial_sparsity <= self.final,
            "initial_sparsity",
            initial_sparsity,
            f"a number in [0, {self.final}]",
        )
        self.method, self.group = method, group
        self.start, self.end, self.frequency, self.initial = start_step, end_step, frequency, initial_sparsity
        self.scores: dict[str, torch.Tensor] = {}
        self.history: list[tuple[int, float, float]] = []

    @staticmethod
    def _final_sparsity(sparsity: float | None, nm: tuple[int, int] | None, pattern: str) -> float:
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            _check(
                sparsity is None or abs(sparsity - implied) < 1e-9,
                "sparsity",
                sparsity,
                f"None or {implied} (pattern {pattern})",
            )
            return implied
        _check(sparsity is not None and 0.0 < sparsity < 1.0, "sparsity", sparsity, "a number in (0, 1)")
        return float(sparsity)

    def _modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return block_modules(model, self._targets, self._ignore)

    def _initial_masks(self, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        """Every target, masked where it is zero now (nothing pruned yet is fine)."""
        if self.nm:
            bad = [n for n, m in modules.items() if weight_out_in(m).shape[1] % self.nm[1]]
            _check(
                not bad,
                "pattern",
                f"{self.nm[0]}:{self.nm[1]}",
                f"in_features divisible by M (not so for {bad[:2]})",
            )
        self._targets_found = modules
        return {n: m.weight.detach() == 0 for n, m in modules.items()}

    # --------------------------------------------------------------- events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.max_steps and self.end > state.max_steps:
            raise ValueError(
                f"GradualPruningCallback end_step={self.end} exceeds the run's max_steps={state.max_steps}: "
                "the target sparsity would never be reached"
            )
        super().on_train_begin(args, state, control, model=model, **kwargs)
        if state.global_step == 0 and self.start == 0 and self.initial > 0:
            self.prune_to(self.initial, 0)  # s_i holds from t0 = 0, before the first step
        if self.method == "movement" and state.global_step < self.end:
            self.scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self._params.items()}
            if state.global_step > 0:
                self._load_scores(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        super().on_pre_optimizer_step(args, state, control, **kwargs)
        for name, scores in self.scores.items():
            param = self._params[name]
            if param.grad is not None:
                movement_update_(scores, param, param.grad)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.start <= step <= self.end and ((step - self.start) % self.frequency == 0 or step == self.end):
            self.prune_to(
                cubic_sparsity(step, initial=self.initial, final=self.final, start=self.start, end=self.end),
                step,
            )
        if step >= self.end:
            self.scores = {}  # masks are final; stop accumulating

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if self.scores and folder.is_dir() and args.should_save:
            from safetensors.torch import save_file

            save_file({n: s.contiguous().cpu() for n, s in self.scores.items()}, str(folder / SCORES_FILE))

    def _load_scores(self, folder: Path) -> None:
        file = folder / SCORES_FILE
        if not file.is_file():
            logger.warning("no %s in %s: movement scores restart from zero", SCORES_FILE, folder)
            return
        from safetensors.torch import load_file

        loaded = load_file(str(file))
        for name, scores in self.scores.items():
            if name in loaded:
                scores.copy_(loaded[name])

    # -------------------------------------------------------------- pruning
    @torch.no_grad()
    def prune_to(self, sparsity: float, step: int = -1) -> float:
        """Grow every target's mask to ``sparsity``, zero the pruned weights; returns the realised sparsity."""
        if sparsity > 0:
            for name, module in self._targets_found.items():
                scores = (
                    weight_out_in(module).abs()
                    if self.method == "magnitude"
                    else _out_in_like(module, self.scores[name])
                )
                mask = grow_mask(
                    scores, _out_in_like(module, self.masks[name]), sparsity, self.nm, self.group
                )
                self.masks[name] = _out_in_like(module, mask)  # a transpose is its own inverse
        self.apply_masks()
        realised = self.sparsity()
        self.history.append((step, sparsity, realised))
        logger.info("step %d: pruned to %.4f (scheduled %.4f)", step, realised, sparsity)
        return realised


def _out_in_like(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A storage-layout tensor as ``[out, in]`` (and back: the transpose is an involution)."""
    return tensor.t() if Conv1D and isinstance(module, Conv1D) else tensor


def _check(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"GradualPruningCallback {name}={value!r} is invalid; allowed: {allowed}")
