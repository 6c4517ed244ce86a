"""The chunked logit loss equals full-logit autograd, in value and gradients."""

from __future__ import annotations

import pytest
import torch

from hf_compress.distill.chunked import (
    Head,
    Objective,
    TeacherTopK,
    chunked_distill_loss,
    reference_distill_loss,
)
from hf_compress.distill.losses import LOGIT_LOSSES, teacher_topk


def _setup(seed=0, n=13, h=8, ht=12, v=20, rows=24, bias=False, scale=1.0, softcap=None):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(rows, h, generator=g)
    b = torch.randn(rows, generator=g) if bias else None
    t_hidden = torch.randn(n, ht, generator=g)
    t_head = Head(torch.randn(rows + 3, ht, generator=g), None, scale, softcap)
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, (t_hidden, t_head), targets


def _grads(fn, hidden, weight, bias):
    leaves = [
        x.detach().clone().requires_grad_(True)
        for x in (hidden, weight) + ((bias,) if bias is not None else ())
    ]
    head = Head(leaves[1], leaves[2] if bias is not None else None, 1.3, 30.0)
    loss = fn(leaves[0], head)
    loss.backward()
    return loss.detach(), [x.grad for x in leaves]


@pytest.mark.parametrize("loss", LOGIT_LOSSES)
@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_chunked_matches_full_logits(loss, chunk):
    hidden, weight, bias, teacher, targets = _setup(bias=True, scale=1.3, softcap=30.0)
    obj = Objective(
        loss=loss, temperature=1.5, beta=0.4, skew_alpha=0.2, ce_weight=0.3, kd_weight=0.7 * 1.5**2
    )
    v = 20
    got, g_got = _grads(
        lambda h, hd: chunked_distill_loss(h, hd, teacher, targets, v, obj, chunk)[0], hidden, weight, bias
    )
    want, g_want = _grads(
        lambda h, hd: reference_distill_loss(h, hd, teacher, targets, v, obj), hidden, weight, bias
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_padded_rows_get_no_gradient_and_stats_are_sums():
    hidden, weight, _, teacher, targets = _setup()
    obj = Objective(ce_weight=0.5, kd_weight=0.5)
    w = weight.clone().requires_grad_(True)
    loss, stats = chunked_distill_loss(hidden, Head(w), teacher, targets, 20, obj, 5)
    loss.backward()
    assert torch.count_nonzero(w.grad[20:]) == 0 and torch.count_nonzero(w.grad[:20]) > 0
    torch.testing.assert_close(stats[0], loss.detach())
    torch.testing.assert_close(stats[0], 0.5 * stats[1] + 0.5 * stats[2])
    assert 0 <= stats[3] <= hidden.shape[0]


def test_online_topk_equals_precomputed_topk():
    hidden, weight, _, (t_hidden, t_head), targets = _setup()
    obj = Objective(loss="jsd", temperature=2.0, top_k=5)
    online, _ = chunked_distill_loss(hidden, Head(weight), (t_hidden, t_head), targets, 20, obj, 3)
    t_logits = t_head.finish(t_head.logits(t_hidden, 20))
    cached = TeacherTopK(*teacher_topk(t_logits, 5, 2.0))
    offline, _ = chunked_distill_loss(hidden, Head(weight), cached, targets, 20, obj, 7)
    torch.testing.assert_close(online, offline)


def test_frozen_head_and_bf16_hidden():
    hidden, weight, _, teacher, targets = _setup()
    h = hidden.bfloat16().requires_grad_(True)
    loss, _ = chunked_distill_loss(h, Head(weight.bfloat16()), teacher, targets, 20, Objective(), 4)
    loss.backward()
    assert h.grad.dtype == torch.bfloat16 and torch.isfinite(h.grad.float()).all()
    ref = reference_distill_loss(hidden, Head(weight), teacher, targets, 20, Objective())
    torch.testing.assert_close(loss.float(), ref, rtol=5e-2, atol=5e-2)
