"""Lossless byte-plane coding of floating-point tensors (pure functions).

Trained weights use few exponents: in bf16 the byte holding the sign and seven exponent bits
carries about 3 bits of information, while the mantissa bytes look random. Splitting a tensor into
byte planes (byte ``j`` of every element together) and entropy-coding each plane on its own
(DEFLATE's Huffman stage, stdlib ``zlib``) therefore shrinks the exponent plane and leaves the
others as they are. This is the idea of ZipNN (Hershcovitch et al., 2024, "ZipNN: Lossless
Compression for AI Models", arXiv:2411.05239). The decode gives back the same bits.

A coded tensor is one self-describing ``uint8`` stream::

    b"HFBP" | version u8 | dtype code u8 | ndim u8 | dims u64 x ndim
            | per plane: method u8 (0 raw, 1 zlib) + payload length u64 | payloads in plane order

Planes are in little-endian byte order (byte 0 = least significant), as safetensors stores them.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib

import torch

MAGIC = b"HFBP"
VERSION = 1
RAW, ZLIB = 0, 1
MIN_NUMEL = 1 << 14
"""Tensors smaller than this are never worth a header (see :func:`worth_coding`)."""
_DTYPES = {torch.float32: 1, torch.bfloat16: 2, torch.float16: 3, torch.float64: 4}
_CODES = {code: dtype for dtype, code in _DTYPES.items()}
_PREFIX = struct.Struct("<4sBBB")
_DIM = struct.Struct("<Q")
_PLANE = struct.Struct("<BQ")


def _check_byte_order() -> None:
    if sys.byteorder != "little":
        raise RuntimeError("byte-plane coding assumes a little-endian host")


def split_planes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of ``k``-byte floats -> ``uint8 [k, numel]``: row ``j`` is byte ``j`` of every element."""
    _check_byte_order()
    flat = tensor.detach().contiguous().view(-1).cpu()
    return flat.view(torch.uint8).view(-1, flat.element_size()).t().contiguous()


def join_planes(planes: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`split_planes`: ``uint8 [k, numel]`` -> tensor of ``dtype`` and ``shape``."""
    _check_byte_order()
    return planes.t().contiguous().view(-1).view(dtype).view(shape)


def encode(tensor: torch.Tensor, level: int = 6) -> torch.Tensor:
    """Byte-plane code ``tensor`` (float32 / bf16 / fp16 / fp64, any shape) into a ``uint8`` stream.

    Each plane is DEFLATE-compressed at ``level`` and kept raw where that does not make it smaller.
    """
    if tensor.dtype not in _DTYPES:
        raise ValueError(f"byte-plane coding takes {sorted(map(str, _DTYPES))}, not {tensor.dtype}")
    header = [_PREFIX.pack(MAGIC, VERSION, _DTYPES[tensor.dtype], tensor.dim())]
    header += [_DIM.pack(size) for size in tensor.shape]
    payloads = []
    for plane in split_planes(tensor):
        raw = plane.numpy().tobytes()
        packed = zlib.compress(raw, level)
        method, payload = (ZLIB, packed) if len(packed) < len(raw) else (RAW, raw)
        header.append(_PLANE.pack(method, len(payload)))
        payloads.append(payload)
    return torch.frombuffer(bytearray(b"".join(header + payloads)), dtype=torch.uint8)


def decode(stream: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode`: the original tensor, bit for bit (on the CPU)."""
    data = stream.detach().contiguous().cpu().numpy().tobytes()
    if len(data) < _PREFIX.size or data[:4] != MAGIC:
        raise ValueError("not a byte-plane coded tensor (bad magic)")
    _, version, code, ndim = _PREFIX.unpack_from(data)
    if version != VERSION or code not in _CODES:
        raise ValueError(
            f"byte-plane stream version {version} / dtype code {code} is not one this reader knows"
        )
    offset = _PREFIX.size
    shape = tuple(_DIM.unpack_from(data, offset + i * _DIM.size)[0] for i in range(ndim))
    offset += ndim * _DIM.size
    dtype = _CODES[code]
    itemsize = torch.empty(0, dtype=dtype).element_size()
    methods = [_PLANE.unpack_from(data, offset + j * _PLANE.size) for j in range(itemsize)]
    offset += itemsize * _PLANE.size
    numel = math.prod(shape)
    planes = torch.empty(itemsize, numel, dtype=torch.uint8)
    for j, (method, length) in enumerate(methods):
        payload = data[offset : offset + length]
        offset += length
        raw = zlib.decompress(payload) if method == ZLIB else payload
        if len(raw) != numel:
            raise ValueError(f"byte plane {j} holds {len(raw)} bytes, expected {numel} (corrupt stream)")
        if numel:
            planes[j] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    if offset != len(data):
        raise ValueError(f"byte-plane stream has {len(data) - offset} trailing bytes (corrupt stream)")
    return join_planes(planes, dtype, shape)


def worth_coding(tensor: torch.Tensor) -> bool:
    """Floating tensors of at least :data:`MIN_NUMEL` elements in a dtype this codec knows."""
    return tensor.dtype in _DTYPES and tensor.numel() >= MIN_NUMEL
