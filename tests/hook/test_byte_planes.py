"""Byte-plane coding (ZipNN-style): bit-exact round trips, planes against a naive bit reference, errors."""

from __future__ import annotations

import pytest
import torch

from hf_compress import byte_planes

SPECIALS = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -3.5, 65504.0]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    as_bytes = [t.reshape(-1).view(torch.uint8) for t in (a, b)]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(*as_bytes)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7), (0,), (), (300, 70)])
def test_round_trip_is_bit_exact(dtype, shape):
    torch.manual_seed(0)
    tensor = (torch.randn(shape) * 0.02).to(dtype)
    if tensor.numel() >= len(SPECIALS):
        tensor.view(-1)[: len(SPECIALS)] = torch.tensor(SPECIALS).to(dtype)
    back = byte_planes.decode(byte_planes.encode(tensor))
    assert bits_equal(back.contiguous(), tensor.contiguous())


def test_planes_match_a_naive_shift_reference():
    torch.manual_seed(1)
    tensor = torch.randn(1000)
    ints = tensor.view(torch.int32).tolist()
    planes = byte_planes.split_planes(tensor)
    for j in range(4):
        assert planes[j].tolist() == [(value >> (8 * j)) & 0xFF for value in ints]


def test_a_non_contiguous_view_codes_its_values():
    tensor = torch.randn(40, 30)[:, ::3]
    assert torch.equal(byte_planes.decode(byte_planes.encode(tensor)), tensor)


def test_exponent_plane_shrinks_and_random_mantissas_stay_raw():
    torch.manual_seed(2)
    tensor = (torch.randn(1 << 16) * 0.02).to(torch.bfloat16)
    stream = byte_planes.encode(tensor)
    assert stream.numel() < 0.8 * tensor.numel() * 2
    header = bytes(
        stream[: byte_planes._PREFIX.size + byte_planes._DIM.size + 2 * byte_planes._PLANE.size].tolist()
    )
    offset = byte_planes._PREFIX.size + byte_planes._DIM.size
    methods = [
        byte_planes._PLANE.unpack_from(header, offset + j * byte_planes._PLANE.size)[0] for j in range(2)
    ]
    assert methods == [byte_planes.RAW, byte_planes.ZLIB]


def test_bad_streams_and_dtypes_are_refused():
    stream = byte_planes.encode(torch.randn(64, 64))
    with pytest.raises(ValueError, match="magic"):
        byte_planes.decode(torch.zeros(16, dtype=torch.uint8))
    with pytest.raises(Exception, match="corrupt|Error|incomplete|truncated"):
        byte_planes.decode(stream[:-10])
    with pytest.raises(ValueError, match="trailing"):
        byte_planes.decode(torch.cat([stream, torch.zeros(3, dtype=torch.uint8)]))
    with pytest.raises(ValueError, match="byte-plane coding takes"):
        byte_planes.encode(torch.arange(10))


def test_worth_coding_needs_a_float_tensor_of_some_size():
    assert byte_planes.worth_coding(torch.zeros(byte_planes.MIN_NUMEL))
    assert not byte_planes.worth_coding(torch.zeros(byte_planes.MIN_NUMEL - 1))
    assert not byte_planes.worth_coding(torch.zeros(byte_planes.MIN_NUMEL, dtype=torch.int64))
