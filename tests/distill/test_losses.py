"""Every loss against a float64 reference written from its definition."""

from __future__ import annotations

import math

import pytest
import torch

from hf_compress.distill import losses as L


def _probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    z = logits.double() / temperature
    e = (z - z.max(-1, keepdim=True).values).exp()
    return e / e.sum(-1, keepdim=True)


def _kl_ref(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_i p_i log(p_i / q_i) with 0 log 0 = 0, row by row, in float64 Python loops."""
    out = []
    for prow, qrow in zip(p.tolist(), q.tolist(), strict=True):
        out.append(sum(pi * math.log(pi / qi) for pi, qi in zip(prow, qrow, strict=True) if pi > 0))
    return torch.tensor(out, dtype=torch.float64)


def _reference(name: str, s_logits, t_logits, temperature=1.0, beta=0.5, skew=0.1) -> torch.Tensor:
    s, t = _probs(s_logits, temperature), _probs(t_logits, temperature)
    if name == "forward_kl":
        return _kl_ref(t, s)
    if name == "reverse_kl":
        return _kl_ref(s, t)
    if name == "jsd":
        m = beta * t + (1 - beta) * s
        return beta * _kl_ref(t, m) + (1 - beta) * _kl_ref(s, m)
    if name == "skew_kl":
        return _kl_ref(t, skew * t + (1 - skew) * s)
    if name == "skew_reverse_kl":
        return _kl_ref(s, skew * s + (1 - skew) * t)
    if name == "tvd":
        return 0.5 * (t - s).abs().sum(-1)
    raise AssertionError(name)


@pytest.fixture
def logits_pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 11, generator=g) * 3, torch.randn(6, 11, generator=g) * 3


@pytest.mark.parametrize("name", L.LOGIT_LOSSES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_logit_losses_match_float64_reference(logits_pair, name, temperature):
    s, t = logits_pair
    got = L.logit_kd_loss(s, t, name, temperature, beta=0.3, skew_alpha=0.2)
    want = _reference(name, s, t, temperature, beta=0.3, skew=0.2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_jsd_endpoints_are_forward_and_reverse_kl(logits_pair):
    s, t = logits_pair
    torch.testing.assert_close(L.logit_kd_loss(s, t, "jsd", beta=0.0), L.logit_kd_loss(s, t, "forward_kl"))
    torch.testing.assert_close(L.logit_kd_loss(s, t, "jsd", beta=1.0), L.logit_kd_loss(s, t, "reverse_kl"))
    # near the endpoints JSD(beta)/beta -> forward KL and JSD(beta)/(1-beta) -> reverse KL (GKD)
    eps = 1e-8
    fwd = _reference("forward_kl", s, t)
    torch.testing.assert_close(_reference("jsd", s, t, beta=eps) / eps, fwd, rtol=2e-3, atol=1e-4)
    rev = _reference("reverse_kl", s, t)
    torch.testing.assert_close(_reference("jsd", s, t, beta=1 - eps) / eps, rev, rtol=2e-3, atol=1e-4)


def test_skew_zero_is_plain_kl(logits_pair):
    s, t = logits_pair
    torch.testing.assert_close(
        L.logit_kd_loss(s, t, "skew_kl", skew_alpha=0.0), L.logit_kd_loss(s, t, "forward_kl")
    )
    torch.testing.assert_close(
        L.logit_kd_loss(s, t, "skew_reverse_kl", skew_alpha=0.0), L.logit_kd_loss(s, t, "reverse_kl")
    )


@pytest.mark.parametrize("name", L.LOGIT_LOSSES)
def test_identical_inputs_give_zero(logits_pair, name):
    s, _ = logits_pair
    got = L.logit_kd_loss(s, s.clone(), name, temperature=1.7)
    torch.testing.assert_close(got, torch.zeros_like(got), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", L.LOGIT_LOSSES)
@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16)])
def test_mixed_dtypes_stay_finite_and_non_negative(name, dtypes):
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(5, 300, generator=g) * 20).to(dtypes[0])
    t = (torch.randn(5, 300, generator=g) * 20).to(dtypes[1])
    s.requires_grad_(True)
    got = L.logit_kd_loss(s, t, name, temperature=0.5)
    assert torch.isfinite(got).all() and (got >= -1e-6).all()
    got.sum().backward()
    assert torch.isfinite(s.grad.float()).all()


def test_extreme_logits_do_not_give_nan_gradients():
    s = torch.tensor([[0.0, -1e4, 5.0]], requires_grad=True)
    t = torch.tensor([[-1e4, 0.0, 5.0]])
    for name in L.LOGIT_LOSSES:
        s.grad = None
        L.logit_kd_loss(s, t, name).sum().backward()
        assert torch.isfinite(s.grad).all(), name


def test_topk_summary_and_tail_against_reference(logits_pair):
    s, t = logits_pair
    ids, top, tail = L.teacher_topk(t, k=4, temperature=2.0)
    p = _probs(t, 2.0)
    ref_top, ref_ids = p.topk(4, dim=-1)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(top.double(), ref_top.log(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tail.double(), (1 - ref_top.sum(-1)).log(), rtol=1e-4, atol=1e-5)
    # divergence over k+1 bins equals the reference on coarsened distributions
    q = _probs(s, 2.0)
    q_bins = torch.cat([q.gather(-1, ids), 1 - q.gather(-1, ids).sum(-1, keepdim=True)], -1)
    p_bins = torch.cat([ref_top, 1 - ref_top.sum(-1, keepdim=True)], -1)
    got = L.topk_kd_loss(s, ids, top, tail, "forward_kl", temperature=2.0)
    torch.testing.assert_close(got.double(), _kl_ref(p_bins, q_bins), rtol=1e-4, atol=1e-6)


def test_topk_with_full_vocabulary_equals_full_loss(logits_pair):
    s, t = logits_pair
    ids, top, tail = L.teacher_topk(t, k=t.shape[-1])
    assert torch.isinf(tail).all()
    for name in L.LOGIT_LOSSES:
        full = L.logit_kd_loss(s, t, name)
        got = L.topk_kd_loss(s, ids, top, tail, name)
        torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-6)


def test_hidden_losses_against_reference():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(7, 9, generator=g), torch.randn(7, 9, generator=g)
    mse = [
        sum((x - y) ** 2 for x, y in zip(r, q, strict=True)) / 9
        for r, q in zip(a.tolist(), b.tolist(), strict=True)
    ]
    torch.testing.assert_close(L.hidden_mse(a, b).double(), torch.tensor(mse, dtype=torch.float64))
    cos = []
    for r, q in zip(a.double().tolist(), b.double().tolist(), strict=True):
        dot = sum(x * y for x, y in zip(r, q, strict=True))
        cos.append(1 - dot / math.sqrt(sum(x * x for x in r) * sum(y * y for y in q)))
    torch.testing.assert_close(
        L.hidden_cosine(a, b).double(), torch.tensor(cos, dtype=torch.float64), atol=1e-6, rtol=1e-5
    )
    assert torch.allclose(L.hidden_mse(a, a), torch.zeros(7)) and torch.allclose(
        L.hidden_cosine(a, a), torch.zeros(7), atol=1e-6
    )


def _causal_probs(g, rows, heads, keys):
    scores = torch.randn(rows, heads, keys, generator=g)
    mask = torch.arange(keys) > torch.arange(rows).unsqueeze(-1).unsqueeze(-1) % keys
    return scores.masked_fill(mask, float("-inf")).softmax(-1)


def test_attention_losses_against_reference():
    g = torch.Generator().manual_seed(4)
    s, t = _causal_probs(g, 5, 3, 5), _causal_probs(g, 5, 3, 5)
    ref = torch.stack([_kl_ref(t[:, h].double(), s[:, h].double()) for h in range(3)], -1).mean(-1)
    torch.testing.assert_close(L.attention_kl(s, t).double(), ref, rtol=1e-5, atol=1e-6)
    ref_mse = ((s.double() - t.double()) ** 2).mean(dim=(-2, -1))
    torch.testing.assert_close(L.attention_mse(s, t).double(), ref_mse)
    torch.testing.assert_close(L.attention_kl(s, s), torch.zeros(5), atol=1e-6, rtol=0)


def test_map_heads_averages_groups():
    attn = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 4, 2, 2)
    mapped = L.map_heads(attn, 2)
    torch.testing.assert_close(mapped[:, 0], (attn[:, 0] + attn[:, 1]) / 2)
    torch.testing.assert_close(mapped[:, 1], (attn[:, 2] + attn[:, 3]) / 2)
    with pytest.raises(ValueError, match="cannot map 4 heads onto 3"):
        L.map_heads(attn, 3)


def test_info_nce_against_reference():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    sn = s.double() / s.double().norm(dim=-1, keepdim=True)
    tn = t.double() / t.double().norm(dim=-1, keepdim=True)
    ref = []
    for i in range(4):
        sims = [float(sn[i] @ tn[j]) / 0.1 for j in range(4)]
        ref.append(-sims[i] + math.log(sum(math.exp(x) for x in sims)))
    torch.testing.assert_close(
        L.info_nce(s, t, 0.1).double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-5
    )
    # perfectly aligned, well separated pairs give a small loss
    eye = torch.eye(4, 6) * 10
    assert L.info_nce(eye, eye, 0.05).max() < 1e-6


def test_unknown_loss_is_refused(logits_pair):
    s, t = logits_pair
    with pytest.raises(ValueError, match="loss='kl' is not supported"):
        L.logit_kd_loss(s, t, "kl")
