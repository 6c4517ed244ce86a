"""Each pruning algorithm against its naive float64 reference."""

import pytest
import torch

from hf_compress.pruning.magnitude import magnitude_mask
from hf_compress.pruning.masks import apply_mask_, mask_lowest, mask_nm, parse_pattern, satisfies_nm
from hf_compress.pruning.sparsegpt import CholeskyError, HessianStats, inverse_hessian_factor, sparsegpt_prune
from hf_compress.pruning.wanda import WandaStats, wanda_mask
from tests.references import ref_sparsegpt, ref_wanda_mask


def _correlated_inputs(n=256, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    mix = torch.randn(d, d, generator=g) * 0.5 + torch.eye(d)
    return base @ mix


def _hessian(x):
    stats = HessianStats(x.shape[1])
    for chunk in x.split(64):
        stats.add_batch(chunk)
    return stats.hessian()


@pytest.mark.parametrize("d", [7, 576, 1100])
def test_hessian_bands_assemble_the_full_symmetric_product(d):
    x = torch.randn(300, d, generator=torch.Generator().manual_seed(d))
    stats = HessianStats(d)
    for chunk in x.split(128):
        stats.add_batch(chunk)
    ref = x.double().t() @ x.double()
    torch.testing.assert_close(stats.xtx.double(), ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(stats.hessian().double(), ref * 2 / 300, rtol=1e-5, atol=1e-5)
    assert stats.tokens == 300


@pytest.mark.parametrize(
    "nm,sparsity", [(None, 0.5), (None, 0.3), ((2, 4), 0.5), ((4, 8), 0.5), ((1, 4), 0.75)]
)
def test_sparsegpt_matches_float64_obs_reference(nm, sparsity):
    x = _correlated_inputs()
    w = torch.randn(12, 32, generator=torch.Generator().manual_seed(1))
    h = _hessian(x)
    result = sparsegpt_prune(w, h, sparsity, nm=nm, block_size=16, damping=0.01)
    ref_w, ref_mask = ref_sparsegpt(w, h, sparsity, nm=nm, block_size=16, damping=0.01)
    assert torch.equal(result.mask, ref_mask)
    torch.testing.assert_close(result.weight.double(), ref_w, atol=2e-4, rtol=1e-4)
    per_block = int(12 * 16 * sparsity) * 2 if nm is None else int(w.numel() * sparsity)
    assert int(result.mask.sum()) == per_block  # floor per comparison group


def test_sparsegpt_beats_mask_only_reconstruction():
    x = _correlated_inputs(seed=3)
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(4))
    result = sparsegpt_prune(w, _hessian(x), 0.5, block_size=32)
    masked_only = w.masked_fill(result.mask, 0.0)
    err_update = ((w - result.weight) @ x.t()).pow(2).sum()
    err_mask_only = ((w - masked_only) @ x.t()).pow(2).sum()
    assert err_update < 0.8 * err_mask_only


def test_sparsegpt_zeros_are_positive_and_input_untouched():
    x = _correlated_inputs()
    w = -torch.rand(8, 32) - 0.1  # all negative: multiplying by 0 would leave -0.0
    before = w.clone()
    result = sparsegpt_prune(w, _hessian(x), 0.5, block_size=16)
    zeros = result.weight[result.mask]
    assert torch.equal(w, before)
    assert torch.all(torch.signbit(zeros) == 0)


def test_sparsegpt_dead_inputs_and_nm_validity():
    x = _correlated_inputs()
    x[:, 5] = 0.0  # a feature that never fires
    result = sparsegpt_prune(torch.randn(8, 32), _hessian(x), 0.5, nm=(2, 4), block_size=16)
    assert satisfies_nm(result.weight, 2, 4)
    assert torch.all(result.weight[:, 5] == 0)


def test_cholesky_failure_retries_with_more_damping_and_is_counted():
    h = torch.ones(6, 6)  # rank one: plain damping 1e-6 is not enough in fp32
    upper, used, retries = inverse_hessian_factor(h, damping=1e-9)
    assert retries > 0 and used > 1e-9
    assert torch.isfinite(upper).all()


def test_cholesky_failure_after_all_retries_raises():
    h = -torch.eye(4)
    with pytest.raises(CholeskyError, match="not positive definite"):
        inverse_hessian_factor(h, damping=0.01, max_retries=2)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.7])
def test_wanda_matches_reference(sparsity):
    x = _correlated_inputs(seed=5)
    w = torch.randn(10, 32, generator=torch.Generator().manual_seed(6))
    stats = WandaStats(32)
    for chunk in x.split(50):
        stats.add_batch(chunk)
    assert torch.equal(wanda_mask(w, stats, sparsity), ref_wanda_mask(w, x, sparsity))


def test_wanda_nm_keeps_highest_scores_per_group():
    x = _correlated_inputs(seed=7)
    w = torch.randn(6, 32)
    stats = WandaStats(32)
    stats.add_batch(x)
    mask = wanda_mask(w, stats, 0.5, nm=(2, 4))
    scores = w.abs() * x.pow(2).sum(0).sqrt()
    for r in range(6):
        for g in range(8):
            group = scores[r, 4 * g : 4 * g + 4]
            kept = ~mask[r, 4 * g : 4 * g + 4]
            assert set(torch.nonzero(kept).flatten().tolist()) == set(torch.topk(group, 2).indices.tolist())


def test_magnitude_groups():
    w = torch.tensor([[1.0, -5.0, 3.0, 0.5], [10.0, 20.0, -30.0, 40.0]])
    layer = magnitude_mask(w, 0.5)
    row = magnitude_mask(w, 0.5, group="row")
    assert layer.tolist() == [[True, True, True, True], [False, False, False, False]]
    assert row.tolist() == [[True, False, False, True], [True, True, False, False]]


def test_mask_helpers():
    scores = torch.arange(16.0).view(2, 8)
    assert mask_lowest(scores, 0.25).sum() == 4
    nm = mask_nm(scores, 1, 4)
    assert nm.sum() == 12 and satisfies_nm(scores.masked_fill(nm, 0.0), 1, 4)
    w = torch.tensor([-1.0, -2.0])
    apply_mask_(w, torch.tensor([True, False]))
    assert not torch.signbit(w[0])
    with pytest.raises(ValueError, match="divisible by M=4"):
        mask_nm(torch.ones(2, 6), 2, 4)


@pytest.mark.parametrize("bad", ["4:4", "0:4", "5:4", "2-4", "x"])
def test_parse_pattern_rejects(bad):
    with pytest.raises(ValueError, match="pattern"):
        parse_pattern(bad)
