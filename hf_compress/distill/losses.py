"""Distillation losses as pure tensor functions (fp32, masked by selection, no module state).

Every function takes tensors whose last dimension is the distribution (vocabulary, classes, keys or
the k+1 bins of a top-k summary) and returns one value per row; callers sum rows and divide by a
global count. Distributions are passed as *log-probabilities* so that zero-probability bins (a
top-k tail of ``-inf``, masked attention keys) contribute exactly 0 without NaN gradients.

References:
    Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network" (soft targets, T^2).
    Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes" (GKD; generalized JSD(beta), on-policy fraction lambda).
    Ko et al. 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models" (skew KL /
    skew reverse KL).
    Wen et al. 2023, "f-Divergence Minimization for Sequence-Level Knowledge Distillation" (TVD).
    Jiao et al. 2020, "TinyBERT" (hidden-state MSE with a learned projection, attention MSE).
    Wang et al. 2020, "MiniLM" (attention-distribution KL over the last layer).
    Tian, Krishnan, Isola 2020, "Contrastive Representation Distillation" (CRD);
    van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding" (InfoNCE).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOGIT_LOSSES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")


def _kl(p_logp: torch.Tensor, q_logp: torch.Tensor, safe: bool = True) -> torch.Tensor:
    """KL(p || q) = sum_i p_i (log p_i - log q_i) over the last dim.

    ``safe=True`` gives exactly 0 (and no NaN gradient) for bins with p_i = 0, i.e. ``log p_i = -inf``
    (top-k tails, masked attention keys). ``safe=False`` is the fused ``F.kl_div`` path for finite
    log-probabilities (a log-softmax of finite logits), a few passes cheaper.
    """
    if not safe:
        return F.kl_div(q_logp, p_logp, reduction="none", log_target=True).sum(-1)
    p = p_logp.exp()
    live = p > 0
    diff = torch.where(live, p_logp, 0.0) - torch.where(live, q_logp, 0.0)
    return (p * diff).sum(-1)


def _log_mix(a_logp: torch.Tensor, b_logp: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w * a + (1 - w) * b) for 0 < w < 1, computed in log space."""
    stacked = torch.stack([a_logp + math.log(weight_a), b_logp + math.log1p(-weight_a)])
    return torch.logsumexp(stacked, dim=0)


def forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, safe: bool = True) -> torch.Tensor:
    """KL(teacher || student): mode-covering soft-target loss (Hinton et al. 2015). ``[..., V] -> [...]``."""
    return _kl(teacher_logp, student_logp, safe)


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, safe: bool = True) -> torch.Tensor:
    """KL(student || teacher): mode-seeking (GKD, Agarwal et al. 2024). ``[..., V] -> [...]``."""
    return _kl(student_logp, teacher_logp, safe)


def generalized_jsd(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float, safe: bool = True
) -> torch.Tensor:
    """Generalized JSD of GKD (Agarwal et al. 2024, eq. 1), ``[..., V] -> [...]``.

    ``JSD(beta) = beta * KL(T || M) + (1 - beta) * KL(S || M)`` with ``M = beta * T + (1 - beta) * S``.
    The endpoints follow GKD's limits of the scaled divergence: ``beta = 0`` is forward KL(T || S) and
    ``beta = 1`` is reverse KL(S || T) (the same convention as TRL's GKDTrainer).
    """
    if beta <= 0.0:
        return forward_kl(student_logp, teacher_logp, safe)
    if beta >= 1.0:
        return reverse_kl(student_logp, teacher_logp, safe)
    mix = _log_mix(teacher_logp, student_logp, beta)
    return beta * _kl(teacher_logp, mix, safe) + (1.0 - beta) * _kl(student_logp, mix, safe)


def skew_kl(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float, safe: bool = True
) -> torch.Tensor:
    """Skew KL of DistiLLM (Ko et al. 2024): ``KL(T || alpha * T + (1 - alpha) * S)``; alpha=0 is forward KL."""
    if alpha <= 0.0:
        return forward_kl(student_logp, teacher_logp, safe)
    return _kl(teacher_logp, _log_mix(teacher_logp, student_logp, alpha), safe)


def skew_reverse_kl(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float, safe: bool = True
) -> torch.Tensor:
    """Skew reverse KL of DistiLLM: ``KL(S || alpha * S + (1 - alpha) * T)``; alpha=0 is reverse KL."""
    if alpha <= 0.0:
        return reverse_kl(student_logp, teacher_logp, safe)
    return _kl(student_logp, _log_mix(student_logp, teacher_logp, alpha), safe)


def total_variation(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Total variation distance ``0.5 * sum |T - S|`` (Wen et al. 2023). ``[..., V] -> [...]``."""
    return 0.5 * (teacher_logp.exp() - student_logp.exp()).abs().sum(-1)


def divergence(
    name: str,
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    beta: float = 0.5,
    skew_alpha: float = 0.1,
    safe: bool = True,
) -> torch.Tensor:
    """Dispatch one of :data:`LOGIT_LOSSES` on normalised log-probabilities, ``[..., V] -> [...]``.

    ``safe=False`` assumes finite log-probabilities (see :func:`_kl`).
    """
    if name == "forward_kl":
        return forward_kl(student_logp, teacher_logp, safe)
    if name == "reverse_kl":
        return reverse_kl(student_logp, teacher_logp, safe)
    if name == "jsd":
        return generalized_jsd(student_logp, teacher_logp, beta, safe)
    if name == "skew_kl":
        return skew_kl(student_logp, teacher_logp, skew_alpha, safe)
    if name == "skew_reverse_kl":
        return skew_reverse_kl(student_logp, teacher_logp, skew_alpha, safe)
    if name == "tvd":
        return total_variation(student_logp, teacher_logp)
    raise ValueError(f"loss={name!r} is not supported; allowed: {', '.join(LOGIT_LOSSES)}")


def logit_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    loss: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew_alpha: float = 0.1,
) -> torch.Tensor:
    """Per-row divergence between temperature-softened distributions, ``[N, V] x [N, V] -> [N]`` (fp32).

    Both inputs are upcast to fp32 before ``log_softmax(logits / temperature)``. The T^2 factor of
    Hinton et al. is *not* applied here; the caller scales. Logits must be finite (their
    log-softmax then is, so the fused ``F.kl_div`` path applies).
    """
    s_logp = F.log_softmax(_scaled(student_logits, temperature), dim=-1)
    t_logp = F.log_softmax(_scaled(teacher_logits, temperature), dim=-1)
    return divergence(loss, s_logp, t_logp, beta, skew_alpha, safe=False)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 ``logits / temperature`` (no extra pass when the temperature is 1)."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def teacher_topk(
    teacher_logits: torch.Tensor, k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summarise a teacher distribution by its top-k log-probabilities and the tail mass.

    Args:
        teacher_logits: ``[N, V]``.
        k: number of kept tokens (``1 <= k <= V``).
        temperature: softmax temperature applied before the summary.

    Returns:
        ``ids [N, k]`` (int64), ``top_logp [N, k]`` and ``tail_logp [N]`` (fp32), where
        ``tail_logp = log(1 - sum(exp(top_logp)))`` is computed as a log-sum-exp over the other tokens
        (``-inf`` when ``k == V``).
    """
    logp = F.log_softmax(_scaled(teacher_logits, temperature), dim=-1)
    top_logp, ids = logp.topk(k, dim=-1)
    return ids, top_logp, _tail_logp(logp, ids)


def _tail_logp(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside ``ids``: ``[N, V], [N, k] -> [N]``."""
    return logp.scatter(-1, ids, float("-inf")).logsumexp(-1)


def student_topk_bins(
    student_logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """The student's distribution coarsened onto the teacher's top-k bins plus one tail bin.

    ``[N, V], [N, k] -> [N, k + 1]`` log-probabilities (fp32), last column = tail.
    """
    logp = F.log_softmax(_scaled(student_logits, temperature), dim=-1)
    return torch.cat([logp.gather(-1, ids), _tail_logp(logp, ids).unsqueeze(-1)], dim=-1)


def topk_kd_loss(
    student_logits: torch.Tensor,
    ids: torch.Tensor,
    teacher_top_logp: torch.Tensor,
    teacher_tail_logp: torch.Tensor,
    loss: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew_alpha: float = 0.1,
) -> torch.Tensor:
    """Divergence over k+1 bins (teacher top-k + tail), ``-> [N]``; the same value online or from a cache.

    Args:
        student_logits: ``[N, V]``.
        ids: ``[N, k]`` teacher top-k token ids.
        teacher_top_logp: ``[N, k]`` teacher log-probabilities of those ids at ``temperature``.
        teacher_tail_logp: ``[N]`` log of the remaining teacher mass.
    """
    s_bins = student_topk_bins(student_logits, ids.long(), temperature)
    t_bins = torch.cat([teacher_top_logp.float(), teacher_tail_logp.float().unsqueeze(-1)], dim=-1)
    return divergence(loss, s_bins, t_bins, beta, skew_alpha)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error per row (TinyBERT), ``[N, D] x [N, D] -> [N]`` (fp32)."""
    return (student.float() - teacher.float()).pow(2).mean(-1)


def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cosine distance ``1 - cos(s, t)`` per row, ``[N, D] x [N, D] -> [N]`` (fp32)."""
    return 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)


def map_heads(attn: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reduce ``[..., H, T, T]`` attention maps to ``n_heads`` heads by averaging groups of heads.

    With ``H % n_heads == 0`` consecutive groups of ``H // n_heads`` heads are averaged (rows stay
    distributions); otherwise all heads are averaged into one, and ``n_heads`` must be 1.
    """
    heads = attn.shape[-3]
    if heads == n_heads:
        return attn
    if heads % n_heads:
        raise ValueError(f"cannot map {heads} heads onto {n_heads}; pass n_heads=1 to average all heads")
    shape = (*attn.shape[:-3], n_heads, heads // n_heads, *attn.shape[-2:])
    return attn.reshape(shape).mean(-3)


def attention_kl(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher row || student row) averaged over heads (MiniLM), ``[N, H, K] x [N, H, K] -> [N]``.

    Rows are attention distributions over keys; masked keys have probability 0 in both maps.
    """
    tiny = torch.finfo(torch.float32).tiny
    t_logp = teacher_probs.float().clamp_min(0).log()
    s_logp = student_probs.float().clamp_min(tiny).log()
    return _kl(t_logp, s_logp).mean(-1)


def attention_mse(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """MSE between attention maps (TinyBERT), mean over heads and keys, ``[N, H, K] x [N, H, K] -> [N]``."""
    return (student_probs.float() - teacher_probs.float()).pow(2).mean(dim=(-2, -1))


def info_nce(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE with in-batch negatives between paired representations, ``[B, D] x [B, D] -> [B]``.

    Row i scores the student vector against every teacher vector (cosine / temperature); the
    positive is teacher i, the other B-1 are negatives (CPC, van den Oord 2018; the contrastive
    objective of CRD, Tian et al. 2020, without its memory bank).
    """
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    logits = s @ t.T / temperature
    target = torch.arange(s.shape[0], device=s.device)
    return F.cross_entropy(logits, target, reduction="none")
