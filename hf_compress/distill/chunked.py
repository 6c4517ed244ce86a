"""Logit distillation from hidden states and LM-head weights, in chunks of tokens.

The student's ``[N, V]`` logits are never held for the whole batch: for each chunk of tokens the
student and teacher logits are built, the loss and its gradient with respect to the chunk's logits
are taken at once, and that gradient is pushed through the LM-head matmul into ``d hidden`` and
``d weight``. Peak extra memory is a few ``[chunk, V]`` fp32 buffers plus one fp32 ``[V, H]``
gradient accumulator, instead of several ``[B, T, V]`` tensors for each model (the "fused linear
cross-entropy" idea of Liger-Kernel, applied to a teacher/student divergence).

The objective for one token with label ``y`` is ``alpha * CE(student, y) + kd_scale * D(T || S)``
(sums over tokens; the caller divides by the global token count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import logit_kd_loss, teacher_topk, topk_kd_loss

# Default chunk budget: about 2**25 logits (128 MiB in fp32) per [chunk, V] buffer. Smaller chunks
# make the weight-gradient matmul (inner dimension = chunk) slow on CPU; ~512+ tokens reach the
# throughput of one full-batch matmul.
_CHUNK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class Head:
    """An LM head as the chunked loss uses it: ``logits = softcap(scale * (h @ weight.T + bias))[:, :vocab]``."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    scale: float = 1.0
    softcap: float | None = None

    def logits(self, hidden: torch.Tensor, vocab: int) -> torch.Tensor:
        """``[n, H] -> [n, vocab]`` raw (pre-scale) logits in fp32; no autograd graph is kept by callers."""
        bias = None if self.bias is None else self.bias[:vocab]
        return F.linear(hidden, self.weight[:vocab], bias).float()

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply the logit scale and Gemma-style soft-capping (differentiable)."""
        out = raw * self.scale if self.scale != 1.0 else raw
        if self.softcap:
            out = self.softcap * torch.tanh(out / self.softcap)
        return out

    def chain(self, raw: torch.Tensor, finished: torch.Tensor, d_finished: torch.Tensor) -> torch.Tensor:
        """``d / d raw`` from ``d / d finish(raw)`` (``dz/du = 1 - (z / cap)^2`` for soft-capping)."""
        d = d_finished
        if self.softcap:
            d = d.mul_(1.0 - (finished / self.softcap).square())
        return d.mul_(self.scale) if self.scale != 1.0 else d


@dataclass(frozen=True)
class Objective:
    """Weights and divergence settings of the per-token objective."""

    loss: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    skew_alpha: float = 0.1
    ce_weight: float = 0.0
    kd_weight: float = 1.0
    top_k: int | None = None


@dataclass(frozen=True)
class TeacherTopK:
    """A precomputed teacher summary for the selected tokens: ``ids/top_logp [N, k]``, ``tail_logp [N]``."""

    ids: torch.Tensor
    top_logp: torch.Tensor
    tail_logp: torch.Tensor


def default_chunk_size(vocab: int) -> int:
    """Tokens per chunk so one ``[chunk, vocab]`` fp32 buffer stays near 128 MiB."""
    return max(16, _CHUNK_ELEMENTS // max(vocab, 1))


def _chunk_terms(
    s_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherTopK,
    targets: torch.Tensor,
    obj: Objective,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-chunk sums ``(objective, kd, ce)`` from fp32 student logits ``[n, V]``."""
    zero = s_logits.new_zeros(())
    kd = zero
    if obj.kd_weight:
        if isinstance(teacher, TeacherTopK):
            kd = topk_kd_loss(
                s_logits,
                teacher.ids,
                teacher.top_logp,
                teacher.tail_logp,
                obj.loss,
                obj.temperature,
                obj.beta,
                obj.skew_alpha,
            ).sum()
        else:
            kd = logit_kd_loss(s_logits, teacher, obj.loss, obj.temperature, obj.beta, obj.skew_alpha).sum()
    ce = F.cross_entropy(s_logits, targets, reduction="sum") if obj.ce_weight else zero
    return obj.ce_weight * ce + obj.kd_weight * kd, kd, ce


def _teacher_chunk(
    teacher, sl: slice, vocab: int, obj: Objective, device: torch.device
) -> torch.Tensor | TeacherTopK:
    """The teacher side of one chunk on ``device``: fp32 logits, or a top-k summary (online or cached)."""
    if isinstance(teacher, TeacherTopK):
        return TeacherTopK(
            teacher.ids[sl].to(device), teacher.top_logp[sl].to(device), teacher.tail_logp[sl].to(device)
        )
    hidden, head = teacher
    with torch.no_grad():
        logits = head.finish(head.logits(hidden[sl], vocab)).to(device)
    if obj.top_k:
        return TeacherTopK(*teacher_topk(logits, obj.top_k, obj.temperature))
    return logits


def _autograd_grad(raw, head: Head, t_side, targets, obj: Objective):
    """``d objective / d raw`` of one chunk by autograd (any divergence, top-k bins)."""
    raw = raw.requires_grad_(True)
    with torch.enable_grad():
        s_logits = head.finish(raw)
        total, kd, ce = _chunk_terms(s_logits, t_side, targets, obj)
    (d_raw,) = torch.autograd.grad(total, raw) if total.requires_grad else (torch.zeros_like(raw),)
    return d_raw, s_logits.detach(), (total.detach(), kd.detach(), ce.detach())


def _has_closed_form(t_side, obj: Objective) -> bool:
    return not isinstance(t_side, TeacherTopK) and obj.loss in ("forward_kl", "reverse_kl")


def _closed_form_grad(raw, head: Head, t_logits, targets, obj: Objective):
    """Forward/reverse KL (+ CE) and their logit gradients in closed form, with in-place buffers.

    With ``S = softmax(z / T)``, ``P = softmax(t / T)``: ``d KL(P||S) / dz = (S - P) / T`` and
    ``d KL(S||P) / dz = S * (log S - log P - KL(S||P)) / T``; ``d CE / dz = softmax(z) - onehot``.
    """
    z = head.finish(raw)
    temp = obj.temperature
    s_logp = F.log_softmax(z if temp == 1.0 else z / temp, dim=-1)
    t_logp = F.log_softmax(t_logits if temp == 1.0 else t_logits / temp, dim=-1)
    if obj.loss == "forward_kl":
        p_t = t_logp.exp()
        rows = _rowdot(p_t, t_logp.sub_(s_logp))
        d_z = s_logp.exp_().sub_(p_t)
    else:
        diff = s_logp - t_logp
        p_s = s_logp.exp_()
        rows = _rowdot(p_s, diff)
        d_z = diff.sub_(rows.unsqueeze(-1)).mul_(p_s)
    d_z.mul_(obj.kd_weight / temp)
    kd = rows.sum()
    ce = kd.new_zeros(())
    if obj.ce_weight:
        logp = F.log_softmax(z, dim=-1)
        ce = -logp.gather(-1, targets.unsqueeze(-1)).sum()
        grad_ce = logp.exp_()
        grad_ce[torch.arange(targets.numel(), device=targets.device), targets] -= 1.0
        d_z.add_(grad_ce, alpha=obj.ce_weight)
    return head.chain(raw, z, d_z), z, (obj.ce_weight * ce + obj.kd_weight * kd, kd, ce)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``[n, V]`` rows without a full-size temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1)


class _ChunkedDistill(torch.autograd.Function):
    """Objective sum with gradients computed in the forward pass, one token chunk at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, head, teacher, targets, vocab, obj, chunk):  # noqa: D102
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        stats = hidden.new_zeros(4, dtype=torch.float32)  # objective, kd, ce, correct
        for start in range(0, hidden.shape[0], chunk):
            sl = slice(start, start + chunk)
            h = hidden[sl]
            t_side = _teacher_chunk(teacher, sl, vocab, obj, hidden.device)
            raw = head.logits(h, vocab)
            grad_fn = _closed_form_grad if _has_closed_form(t_side, obj) else _autograd_grad
            d_raw, s_logits, (total, kd, ce) = grad_fn(raw, head, t_side, targets[sl], obj)
            if need_h:
                grad_h[sl] = (d_raw.to(weight.dtype) @ weight[:vocab]).to(hidden.dtype)
            if need_w:
                grad_w[:vocab].addmm_(d_raw.T, h.float())
            if need_b:
                grad_b[:vocab] += d_raw.sum(0)
            correct = (
                (s_logits.detach().argmax(-1) == targets[sl]).sum() if obj.ce_weight else total.new_zeros(())
            )
            stats += torch.stack([total.detach(), kd.detach(), ce.detach(), correct.float()])
        ctx.save_for_backward(
            *(g for g in (grad_h, grad_w, grad_b) if g is not None),
        )
        ctx.has = (need_h, need_w, need_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(stats)
        return stats[0].clone(), stats

    @staticmethod
    def backward(ctx, grad_out, _grad_stats):  # noqa: D102
        saved = iter(ctx.saved_tensors)
        grads = [next(saved).mul_(grad_out) if flag else None for flag in ctx.has]
        if grads[1] is not None:
            grads[1] = grads[1].to(ctx.dtypes[0])
        if grads[2] is not None:
            grads[2] = grads[2].to(ctx.dtypes[1])
        return (*grads, None, None, None, None, None, None)


def chunked_distill_loss(
    hidden: torch.Tensor,
    head: Head,
    teacher: tuple[torch.Tensor, Head] | TeacherTopK,
    targets: torch.Tensor,
    vocab: int,
    objective: Objective,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over tokens of ``ce_weight * CE + kd_weight * D(teacher || student)``, chunked over tokens.

    Args:
        hidden: ``[N, H]`` student final hidden states of the selected (label-bearing) positions.
        head: the student's LM head (its ``weight``/``bias`` receive gradients).
        teacher: ``(teacher_hidden [N, Ht], teacher_head)`` for online distillation, or a
            :class:`TeacherTopK` summary (offline cache).
        targets: ``[N]`` next-token ids (all valid).
        vocab: number of vocabulary rows compared (the real vocabulary when embeddings are padded).
        objective: loss settings.
        chunk_size: tokens per chunk (default: :func:`default_chunk_size`).

    Returns:
        ``loss`` (scalar, differentiable w.r.t. ``hidden``, ``head.weight``, ``head.bias``) and
        ``stats = [objective_sum, kd_sum, ce_sum, n_correct]`` (detached, fp32; ``n_correct`` (top-1 ==
        label) is only counted when ``ce_weight > 0``, to save a pass over the logits otherwise).
    """
    chunk = chunk_size or default_chunk_size(vocab)
    return _ChunkedDistill.apply(
        hidden, head.weight, head.bias, head, teacher, targets, vocab, objective, chunk
    )


def reference_distill_loss(
    hidden: torch.Tensor,
    head: Head,
    teacher: tuple[torch.Tensor, Head] | TeacherTopK,
    targets: torch.Tensor,
    vocab: int,
    objective: Objective,
) -> torch.Tensor:
    """The same objective with full logits and plain autograd (for tests and small inputs)."""
    s_logits = head.finish(
        F.linear(hidden, head.weight[:vocab], None if head.bias is None else head.bias[:vocab]).float()
    )
    t_side = _teacher_chunk(teacher, slice(None), vocab, objective, hidden.device)
    return _chunk_terms(s_logits, t_side, targets, objective)[0]
