"""Compact, exact storage of sparse weights (pure tensor functions).

Two formats for a 2-D weight viewed as ``[out, in]``; both give back the same bits on decode:

* ``"bitmask"``: the stored entries in row-major order plus one bit per element (packed into
  ``uint8``, least significant bit first). At 50 % sparsity this is ``1/2 + 1/(8 * bytes)`` of dense.
* ``"N:M"`` (e.g. ``"2:4"``): every run of ``M`` consecutive inputs keeps exactly ``N`` values,
  ``values`` is ``[out, in * N / M]`` and each value carries its position in the run as a
  ``ceil(log2 M)``-bit code (2 bits for 2:4), packed the same way. This is the layout of NVIDIA's
  2:4 semi-structured sparsity (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks").

"Stored" means every element that is not ``+0.0``: ``-0.0`` and ``NaN`` are kept as values, so a
round trip is bit-exact, not only ``==``-exact. :func:`choose_format` picks the smallest of dense,
bitmask and N:M for one tensor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .models.table import decoder_layers
from .models.weights import is_prunable, prunable_modules, weight_out_in

DENSE = "dense"
BITMASK = "bitmask"


def index_bits(m: int) -> int:
    """Bits per position code in a run of ``m`` inputs: ``ceil(log2 m)`` (2 for 2:4, 3 for 4:8)."""
    if m < 2:
        raise ValueError(f"M={m} must be >= 2")
    return max(1, math.ceil(math.log2(m)))


def stored_mask(weight: torch.Tensor) -> torch.Tensor:
    """Bool mask of the elements that must be stored: everything except ``+0.0``."""
    return (weight != 0) | torch.signbit(weight)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes (each ``< 2**bits``, ``bits <= 8``) into a flat ``uint8`` stream.

    Code ``k``'s bit ``j`` is stream bit ``k * bits + j``; stream bit ``i`` is bit ``i % 8`` of byte
    ``i // 8`` (LSB first). Returns ``ceil(len * bits / 8)`` bytes; the padding bits are zero.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits} must be in [1, 8]")
    flat = codes.reshape(-1).to(torch.uint8)
    if 8 % bits == 0:  # whole codes per byte (1, 2, 4, 8 bits): shift and OR, no bit stream
        return _or_shifted(flat, bits)
    shifts = torch.arange(bits, dtype=torch.uint8, device=flat.device)
    return _or_shifted(((flat[:, None] >> shifts) & 1).reshape(-1), 1)


def _or_shifted(codes: torch.Tensor, bits: int) -> torch.Tensor:
    per_byte = 8 // bits
    lanes = torch.nn.functional.pad(codes, (0, (-codes.numel()) % per_byte)).view(-1, per_byte)
    packed = lanes[:, 0].clone()
    for j in range(1, per_byte):
        packed |= lanes[:, j] << (j * bits)
    return packed


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` codes as ``uint8``."""
    needed = math.ceil(count * bits / 8)
    if packed.numel() < needed:
        raise ValueError(f"{packed.numel()} packed bytes hold fewer than {count} codes of {bits} bits")
    data = packed.reshape(-1)[:needed]
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=data.device)
        return ((data[:, None] >> shifts) & (2**bits - 1)).reshape(-1)[:count]
    shifts = torch.arange(8, dtype=torch.uint8, device=data.device)
    stream = ((data[:, None] >> shifts) & 1).reshape(-1)[: count * bits].view(count, bits)
    codes = stream[:, 0].clone()
    for j in range(1, bits):
        codes |= stream[:, j] << j
    return codes


def pack_bitmask(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (any shape) -> ``(values [nnz], bitmask uint8 [ceil(numel / 8)])``."""
    mask = stored_mask(weight)
    return weight[mask], pack_bits(mask, 1)


def unpack_bitmask(values: torch.Tensor, bitmask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Dense tensor of ``shape`` with ``values`` where the mask bit is set, ``+0.0`` elsewhere."""
    numel = math.prod(shape)
    mask = unpack_bits(bitmask, 1, numel).bool()
    if int(mask.sum()) != values.numel():
        raise ValueError(f"bitmask marks {int(mask.sum())} entries but {values.numel()} values are stored")
    dense = torch.zeros(numel, dtype=values.dtype, device=values.device)
    dense[mask] = values.reshape(-1)
    return dense.view(shape)


def fits_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every run of ``m`` inputs of ``[out, in]`` has at most ``n`` stored entries."""
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool((stored_mask(weight).view(rows, cols // m, m).sum(dim=2) <= n).all())


def pack_nm(weight: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[out, in]`` with at most ``n`` stored entries per run of ``m`` -> ``(values, indices)``.

    ``values`` is ``[out, in * n / m]``: per run, the stored entries in input order, padded with
    zeros taken from the run (so the decode is exact). ``indices`` packs each value's position in
    its run with :func:`index_bits` bits.
    """
    rows, cols = weight.shape
    runs = weight.reshape(rows, cols // m, m) if cols % m == 0 else None
    stored = stored_mask(runs) if runs is not None else None
    if stored is None or bool((stored.sum(dim=2) > n).any()):
        raise ValueError(f"weight {tuple(weight.shape)} does not satisfy {n}:{m} (or in % M != 0)")
    # stored entries first, each group in input order: key = position (+ m when not stored)
    key = torch.arange(m, dtype=torch.uint8, device=weight.device) + (~stored).to(torch.uint8) * m
    positions = torch.topk(key, n, dim=2, largest=False, sorted=True).values % m
    positions = torch.sort(positions, dim=2).values.long()
    values = runs.gather(2, positions).reshape(rows, cols // m * n)
    return values, pack_bits(positions, index_bits(m))


def unpack_nm(
    values: torch.Tensor, indices: torch.Tensor, shape: tuple[int, int], n: int, m: int
) -> torch.Tensor:
    """Inverse of :func:`pack_nm`: the dense ``[out, in]`` weight."""
    rows, cols = shape
    if values.shape != (rows, cols // m * n):
        raise ValueError(
            f"{n}:{m} values of shape {tuple(values.shape)} do not fit a weight of shape {shape}"
        )
    positions = unpack_bits(indices, index_bits(m), values.numel()).view(rows, cols // m, n).long()
    dense = torch.zeros(rows, cols // m, m, dtype=values.dtype, device=values.device)
    dense.scatter_(2, positions.to(values.device), values.view(rows, cols // m, n))
    return dense.view(rows, cols)


def parse_nm(fmt: str) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; ``"bitmask"`` / ``"dense"`` -> ``None``."""
    if fmt in (DENSE, BITMASK):
        return None
    n, m = (int(part) for part in fmt.split(":"))
    if not 0 < n < m:
        raise ValueError(f"format {fmt!r} needs 0 < N < M")
    return n, m


def packed_nbytes(weight: torch.Tensor, fmt: str, stored: int | None = None) -> int:
    """Bytes :func:`encode` writes for ``weight`` ``[out, in]`` in format ``fmt``.

    ``stored`` (the count of stored entries) saves a pass over ``weight`` when already known.
    """
    item, numel = weight.element_size(), weight.numel()
    if fmt == DENSE:
        return numel * item
    if fmt == BITMASK:
        stored = int(stored_mask(weight).sum()) if stored is None else stored
        return stored * item + math.ceil(numel / 8)
    n, m = parse_nm(fmt)
    kept = numel // m * n
    return kept * item + math.ceil(kept * index_bits(m) / 8)


def choose_format(
    weight: torch.Tensor,
    patterns: tuple[tuple[int, int], ...] = ((2, 4),),
    prefer: tuple[int, int] | None = None,
) -> str:
    """Storage format for ``[out, in]`` ``weight``.

    ``prefer`` (the pattern the model was pruned to) wins whenever the weight fits it, so a 2:4 model
    is stored in the 2:4 layout throughout even where a few extra zeros would make a bitmask a little
    smaller. Otherwise the smallest of dense, bitmask and each fitting pattern of ``patterns``;
    ties go to N:M, then to dense (readable anywhere).
    """
    mask = stored_mask(weight)
    rows, cols = weight.shape
    stored = int(mask.sum())

    def fits(n: int, m: int) -> bool:
        return cols % m == 0 and bool((mask.view(rows, cols // m, m).sum(dim=2) <= n).all())

    if prefer is not None and fits(*prefer):
        return f"{prefer[0]}:{prefer[1]}"
    fitting = [f"{n}:{m}" for n, m in patterns if fits(n, m)]
    return min([*fitting, DENSE, BITMASK], key=lambda fmt: packed_nbytes(weight, fmt, stored))


def encode(weight: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[out, in]`` -> ``(values, aux)`` for ``fmt`` (``aux`` is ``None`` for dense)."""
    if fmt == DENSE:
        return weight, None
    if fmt == BITMASK:
        return pack_bitmask(weight)
    return pack_nm(weight, *parse_nm(fmt))


def decode(fmt: str, values: torch.Tensor, aux: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`encode`: the dense ``[out, in]`` weight of ``shape``."""
    if fmt == DENSE:
        return values
    if aux is None:
        raise ValueError(f"format {fmt!r} needs its index tensor, which is missing")
    if fmt == BITMASK:
        return unpack_bitmask(values, aux, tuple(shape))
    return unpack_nm(values, aux, tuple(shape), *parse_nm(fmt))


# ----------------------------------------------------------------------------- model level


def aux_name(fmt: str) -> str:
    """Name of the index tensor stored next to ``<module>.weight`` for format ``fmt``."""
    return "weight_bitmask" if fmt == BITMASK else "weight_nm_index"


def block_linears(model: nn.Module) -> dict[str, nn.Module]:
    """``{full name: module}`` of the prunable projections inside the decoder blocks."""
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    found = {}
    for index, layer in enumerate(layers):
        found.update(prunable_modules(layer, prefix=f"{prefix}.{index}."))
    return found


def compact_state_dict(
    model: nn.Module, pattern: tuple[int, int] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(state dict, {module name: format})`` with each block projection in its :func:`choose_format`.

    ``pattern`` is the N:M pattern the model was pruned to (preferred where it holds); 2:4 is always
    a candidate. A compacted ``<name>.weight`` holds the values (a shape no plain loader accepts)
    and ``<name>.<aux_name(fmt)>`` the packed indices; everything else is the model's own tensors.
    """
    state = model.state_dict()
    formats = {}
    candidates = tuple(dict.fromkeys([p for p in (pattern, (2, 4)) if p]))
    for name, module in block_linears(model).items():
        weight = weight_out_in(module).detach()
        fmt = choose_format(weight, candidates, prefer=pattern)
        if fmt == DENSE:
            continue
        values, aux = encode(weight, fmt)
        state[f"{name}.weight"] = values.contiguous()
        state[f"{name}.{aux_name(fmt)}"] = aux
        formats[name] = fmt
    return state, formats


def add_compact_slots(model: nn.Module, formats: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Before loading: give each compacted module a buffer for its indices; return dense ``[out, in]`` shapes."""
    shapes = {}
    for name, fmt in formats.items():
        module = _module(model, name)
        shapes[name] = tuple(weight_out_in(module).shape)
        module.register_buffer(aux_name(fmt), torch.empty(0, dtype=torch.uint8, device=module.weight.device))
    return shapes


def restore_dense(model: nn.Module, formats: dict[str, str], shapes: dict[str, tuple[int, int]]) -> None:
    """After loading: decode each compacted module into a dense trainable weight; drop the index buffer."""
    for name, fmt in formats.items():
        module = _module(model, name)
        aux = module._buffers.pop(aux_name(fmt))
        if module.weight.is_meta or aux.is_meta:
            raise ValueError(
                f"the checkpoint lacks {name}.weight or {name}.{aux_name(fmt)} of its compact weights"
            )
        dense = decode(fmt, module.weight.detach(), aux, shapes[name])
        layout = dense if isinstance(module, nn.Linear) else dense.t()
        module.weight = nn.Parameter(layout.contiguous(), requires_grad=True)


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"the checkpoint stores compact weights for {name!r}, which this model does not have"
        ) from None
    if not is_prunable(module):
        raise ValueError(f"{name!r} is a {type(module).__name__}, not a projection with compact weights")
    return module
