"""Realised sparsity per module, per block and in total, and whether N:M patterns hold."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from .models.table import arch_spec, decoder_layers
from .models.weights import is_prunable, weight_out_in
from .pruning.masks import satisfies_nm

_PATTERNS = ((2, 4), (4, 8))


@dataclass
class ModuleSparsity:
    name: str
    block: int | None
    shape: tuple[int, int]
    zeros: int
    numel: int
    nm: dict[str, bool]

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Zeros in every prunable module; ``total`` covers the decoder blocks' projections."""

    modules: list[ModuleSparsity] = field(default_factory=list)
    parameters: int = 0
    zero_parameters: int = 0

    @property
    def total(self) -> float:
        inside = [m for m in self.modules if m.block is not None]
        numel = sum(m.numel for m in inside)
        return sum(m.zeros for m in inside) / numel if numel else 0.0

    def per_block(self) -> dict[int, float]:
        blocks: dict[int, list[int]] = {}
        for m in self.modules:
            if m.block is not None:
                acc = blocks.setdefault(m.block, [0, 0])
                acc[0] += m.zeros
                acc[1] += m.numel
        return {b: z / n for b, (z, n) in sorted(blocks.items())}

    def pattern_holds(self, pattern: str) -> bool:
        """True when every decoder-block projection satisfies ``pattern`` (e.g. ``"2:4"``)."""
        return all(m.nm.get(pattern, False) for m in self.modules if m.block is not None)

    def to_dict(self) -> dict:
        return {
            "total_decoder_sparsity": self.total,
            "model_zero_fraction": self.zero_parameters / max(self.parameters, 1),
            "per_block": self.per_block(),
            "patterns": {f"{n}:{m}": self.pattern_holds(f"{n}:{m}") for n, m in _PATTERNS},
            "modules": [asdict(m) | {"sparsity": m.sparsity} for m in self.modules],
        }

    def __str__(self) -> str:
        lines = [f"{'module':<48} {'shape':>12} {'sparsity':>9}  N:M"]
        for m in self.modules:
            ok = ",".join(p for p, v in m.nm.items() if v) or "-"
            lines.append(f"{m.name:<48} {str(m.shape):>12} {m.sparsity:>9.2%}  {ok}")
        lines.append(f"decoder projections: {self.total:.2%} sparse; whole model: "
                     f"{self.zero_parameters / max(self.parameters, 1):.2%} zeros")
        return "\n".join(lines)


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Count zeros (``== 0``, so ``-0.0`` counts) in every prunable module of ``model``."""
    arch_spec(model)
    block_of = {id(m): i for i, layer in enumerate(decoder_layers(model)) for m in layer.modules()}
    report = SparsityReport()
    for name, module in model.named_modules():
        if not is_prunable(module):
            continue
        w = weight_out_in(module).detach()
        nm = {f"{n}:{m}": satisfies_nm(w, n, m) for n, m in _PATTERNS}
        zeros = int((w == 0).sum())
        report.modules.append(ModuleSparsity(name, block_of.get(id(module)), tuple(w.shape), zeros, w.numel(), nm))
    seen = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            report.parameters += p.numel()
            report.zero_parameters += int((p == 0).sum())
    return report
