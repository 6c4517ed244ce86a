"""Compact sparse storage: bit packing against a naive reference, exact round trips, sizes."""

from __future__ import annotations

import math

import pytest
import torch

from hf_compress.compact import (
    BITMASK,
    DENSE,
    choose_format,
    decode,
    encode,
    fits_nm,
    index_bits,
    pack_bitmask,
    pack_bits,
    pack_nm,
    packed_nbytes,
    unpack_bitmask,
    unpack_bits,
    unpack_nm,
)
from hf_compress.pruning.masks import apply_mask_, mask_lowest, mask_nm


def naive_pack(codes: list[int], bits: int) -> list[int]:
    """Reference: write each code's bits LSB first into one stream, 8 stream bits per byte, LSB first."""
    stream = [(code >> j) & 1 for code in codes for j in range(bits)]
    stream += [0] * (-len(stream) % 8)
    return [sum(stream[i + j] << j for j in range(8)) for i in range(0, len(stream), 8)]


def naive_nm_decode(values: torch.Tensor, positions: list[list[list[int]]], m: int) -> torch.Tensor:
    """Reference decode from the paper's description: value ``k`` of run ``g`` sits at ``positions[r][g][k]``."""
    rows, kept = values.shape
    n = len(positions[0][0])
    out = torch.zeros(rows, kept // n * m, dtype=torch.float64)
    for r in range(rows):
        for g in range(kept // n):
            for k in range(n):
                out[r, g * m + positions[r][g][k]] = float(values[r, g * n + k])
    return out


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.view(
        {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype]
    )


def sparse(shape=(12, 32), sparsity=0.5, dtype=torch.float32, seed=0) -> torch.Tensor:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return apply_mask_(w, mask_lowest(w.abs().float(), sparsity))


def two_four(shape=(12, 32), dtype=torch.float32, seed=0, n=2, m=4) -> torch.Tensor:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return apply_mask_(w, mask_nm(w.abs().float(), n, m))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 8, 13, 64])
def test_pack_bits_matches_naive_reference(bits, count):
    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(bits * 100 + count))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == naive_pack(codes.tolist(), bits)
    assert torch.equal(unpack_bits(packed, bits, count), codes.to(torch.uint8))


def test_pack_bits_rejects_bad_width_and_short_streams():
    with pytest.raises(ValueError, match="bits=9"):
        pack_bits(torch.zeros(3), 9)
    with pytest.raises(ValueError, match="fewer than"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 2, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bitmask_round_trip_is_bit_exact(dtype):
    w = sparse(dtype=dtype)
    w[0, 0], w[0, 1], w[1, 2], w[2, 3] = -0.0, float("nan"), float("inf"), 0.0
    values, bitmask = pack_bitmask(w)
    assert bitmask.numel() == math.ceil(w.numel() / 8)
    out = unpack_bitmask(values, bitmask, tuple(w.shape))
    assert out.dtype == dtype
    assert torch.equal(bits_of(out), bits_of(w))  # -0.0 and NaN come back bit for bit


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_bitmask_handles_all_zero_and_all_dense(fill):
    w = torch.full((5, 7), fill)
    values, bitmask = pack_bitmask(w)
    assert values.numel() == (0 if fill == 0 else 35)
    assert torch.equal(unpack_bitmask(values, bitmask, (5, 7)), w)


def test_bitmask_rejects_a_count_mismatch():
    values, bitmask = pack_bitmask(sparse())
    with pytest.raises(ValueError, match="marks"):
        unpack_bitmask(values[:-1], bitmask, (12, 32))


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (1, 2)])
def test_nm_round_trip_against_naive_decode(n, m):
    w = two_four(n=n, m=m)
    w[0, :m] = 0.0  # a run with no stored value at all
    w[1, 0:m] = 0.0
    w[1, 1] = -0.0  # a stored -0.0
    values, indices = pack_nm(w, n, m)
    assert values.shape == (12, 32 // m * n)
    assert indices.numel() == math.ceil(values.numel() * index_bits(m) / 8)
    positions = unpack_bits(indices, index_bits(m), values.numel()).view(12, 32 // m, n).tolist()
    assert torch.equal(naive_nm_decode(values.double(), positions, m), w.double())
    out = unpack_nm(values, indices, (12, 32), n, m)
    assert torch.equal(bits_of(out), bits_of(w))


def test_nm_refuses_weights_that_break_the_pattern():
    w = sparse(sparsity=0.3)
    assert not fits_nm(w, 2, 4)
    with pytest.raises(ValueError, match="does not satisfy 2:4"):
        pack_nm(w, 2, 4)
    assert not fits_nm(two_four(shape=(4, 30), n=1, m=3)[:, :29], 1, 3)  # in % M != 0


def test_index_bits():
    assert [index_bits(m) for m in (2, 3, 4, 5, 8, 16)] == [1, 2, 2, 3, 3, 4]
    with pytest.raises(ValueError):
        index_bits(1)


@pytest.mark.parametrize("fmt", [DENSE, BITMASK, "2:4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_nbytes_is_what_encode_writes(fmt, dtype):
    w = two_four(dtype=dtype)
    values, aux = encode(w, fmt)
    written = values.numel() * values.element_size() + (0 if aux is None else aux.numel())
    assert packed_nbytes(w, fmt) == written
    assert torch.equal(bits_of(decode(fmt, values, aux, tuple(w.shape))), bits_of(w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_half_sparse_weights_are_at_least_1_6x_smaller(dtype):
    for w, fmt in (
        (sparse(shape=(64, 128), dtype=dtype), BITMASK),
        (two_four(shape=(64, 128), dtype=dtype), "2:4"),
    ):
        assert choose_format(w) == fmt
        assert packed_nbytes(w, DENSE) / packed_nbytes(w, fmt) >= 1.6


def test_choose_format_prefers_dense_when_nothing_is_saved():
    assert choose_format(torch.randn(8, 16)) == DENSE
    assert choose_format(sparse(sparsity=0.02)) == DENSE  # 1 mask bit per element outweighs 2 % zeros
    sparser = two_four()
    sparser[:, :16] = 0.0  # 2:4 still holds, but a bitmask over 25 % density is smaller
    assert choose_format(sparser) == BITMASK
    assert choose_format(sparser, prefer=(2, 4)) == "2:4"  # unless the model was pruned to 2:4
    assert choose_format(sparse(), prefer=(2, 4)) == BITMASK  # a preference that does not hold
    assert choose_format(two_four(n=1, m=4), patterns=((1, 4),)) == "1:4"  # 2 bits x 1/4 < 1 bit
    assert choose_format(two_four(n=4, m=8), patterns=((4, 8),)) == BITMASK  # 3 bits x 1/2 > 1 bit


def test_decode_needs_the_index_tensor():
    with pytest.raises(ValueError, match="index tensor"):
        decode(BITMASK, torch.zeros(3), None, (2, 2))
