"""``PrunerConfig``: what to prune, how, and with which calibration data. Validated on creation."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .pruning.masks import parse_pattern

METHODS = ("magnitude", "wanda", "sparsegpt")
GROUPS = ("layer", "row")
SCHEDULES = ("uniform", "owl")
SEQUENTIAL = ("module", "block")
_RUNTIME_ONLY = ("dataset", "tokenizer")


@dataclass
class PrunerConfig:
    """Unstructured / N:M pruning settings (one config picks the algorithm, as torchao's ``quantize_``).

    Args:
        method: ``"magnitude"`` | ``"wanda"`` | ``"sparsegpt"``.
        sparsity: fraction of weights removed in each targeted module, in ``[0, 1)``. With an ``N:M``
            pattern it is implied (``1 - N/M``) and may be left ``None``.
        pattern: ``"unstructured"`` or ``"N:M"`` (at most N nonzeros in every M consecutive inputs).
        group: magnitude's comparison group, ``"layer"`` (default) or ``"row"``; Wanda always uses rows.
        targets: regexes (``re.search``) over full module names to prune; ``None`` = every linear in
            the decoder blocks. ``ignore``: regexes to exclude. Embeddings and ``lm_head`` are never
            inside the blocks, so they are never pruned.
        schedule: ``"uniform"`` or ``"owl"`` (Yin et al. 2024, outlier-weighted layerwise sparsity);
            ``layer_sparsity`` gives one explicit sparsity per block instead.
        owl_lambda, owl_threshold: OWL's allowed deviation from the mean sparsity and outlier multiple M.
        n_samples, seqlen, seed: calibration windows (count, tokens each, sampling seed).
        block_size, damping: SparseGPT's lazy-update block width and Hessian damping (x mean diagonal).
        batch_size: calibration windows per forward pass.
        sequential: ``"module"`` (default): inside each block, every module's statistics are gathered
            from inputs produced by the already-pruned modules before it (q/k/v, then o, then gate/up,
            then down; GPTQ's "true sequential"), in one forward per block. ``"block"``: every module of
            a block sees the dense block's inputs, then the block is recomputed (the SparseGPT and Wanda
            reference code, and llm-compressor). Both propagate the error from block to block.
        dataset, tokenizer: calibration data for the ``from_pretrained`` hook (not serialized).
    """

    # transformers' quantizer registry dispatches a from_pretrained(quantization_config=...) on this name
    quant_method: ClassVar[str] = "hf_compress"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "method": METHODS, "group": GROUPS, "schedule": SCHEDULES, "sequential": SEQUENTIAL
    }  # fmt: skip

    method: str = "sparsegpt"
    sparsity: float | None = 0.5
    pattern: str = "unstructured"
    group: str = "layer"
    targets: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    schedule: str = "uniform"
    layer_sparsity: list[float] | None = None
    owl_lambda: float = 0.08
    owl_threshold: float = 5.0
    n_samples: int = 128
    seqlen: int = 2048
    seed: int = 0
    block_size: int = 128
    damping: float = 0.01
    batch_size: int = 8
    sequential: str = "module"
    dataset: Any = None
    tokenizer: Any = None

    def __post_init__(self):
        _one_of("method", self.method, METHODS)
        _one_of("group", self.group, GROUPS)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("sequential", self.sequential, SEQUENTIAL)
        nm = parse_pattern(self.pattern)
        self.pattern = "unstructured" if nm is None else f"{nm[0]}:{nm[1]}"
        self._check_sparsity(nm)
        self._check_layer_sparsity(nm)
        self._check_patterns()
        for name in ("n_samples", "seqlen", "block_size", "batch_size"):
            _positive_int(name, getattr(self, name))
        if nm and self.block_size % nm[1]:
            raise ValueError(f"block_size={self.block_size} must be a multiple of M={nm[1]} for pattern {self.pattern}")
        _in_range("damping", self.damping, 0.0, 1.0, low_open=True)
        _in_range("owl_lambda", self.owl_lambda, 0.0, 1.0)
        if self.owl_threshold <= 0:
            raise ValueError(f"owl_threshold={self.owl_threshold} must be > 0")

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` for an N:M pattern, else ``None``."""
        return parse_pattern(self.pattern)

    @property
    def needs_calibration(self) -> bool:
        """Wanda, SparseGPT and OWL read activations; plain magnitude pruning does not."""
        return self.method != "magnitude" or self.schedule == "owl"

    def _check_sparsity(self, nm):
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if self.sparsity is not None and abs(self.sparsity - implied) > 1e-9:
                raise ValueError(
                    f"sparsity={self.sparsity} contradicts pattern={self.pattern!r}, which implies {implied:g}; "
                    "leave sparsity unset (None) or set it to that value"
                )
            self.sparsity = implied
            if self.schedule != "uniform" or self.layer_sparsity is not None:
                raise ValueError(f"pattern={self.pattern!r} fixes the sparsity of every layer; use schedule='uniform'")
            return
        if self.sparsity is None:
            raise ValueError("sparsity=None is only allowed with an N:M pattern; give a fraction in [0, 1)")
        _in_range("sparsity", self.sparsity, 0.0, 1.0, high_open=True)

    def _check_layer_sparsity(self, nm):
        if self.layer_sparsity is None:
            return
        if self.schedule == "owl":
            raise ValueError("layer_sparsity and schedule='owl' are exclusive; give one")
        for i, value in enumerate(self.layer_sparsity):
            _in_range(f"layer_sparsity[{i}]", value, 0.0, 1.0, high_open=True)

    def _check_patterns(self):
        for name in ("targets", "ignore"):
            for pattern in getattr(self, name) or []:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{name} entry {pattern!r} is not a valid regex: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """Serializable settings (the runtime-only ``dataset``/``tokenizer`` are left out)."""
        data = asdict(self)
        for key in _RUNTIME_ONLY:
            data.pop(key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrunerConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise an error that lists the allowed ones."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown PrunerConfig field(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**data)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> PrunerConfig:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})


def _one_of(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _in_range(name, value, low, high, low_open=False, high_open=False) -> None:
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r} must be a number in {interval}")
