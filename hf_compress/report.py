"""Run reports: what was done, on which data, with which versions, how long and how much memory."""

from __future__ import annotations

import json
import platform
import resource
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("hf-compress", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class PruningReport:
    """Everything one ``prune()`` call did and measured; ``to_dict()`` is JSON-ready."""

    config: dict[str, Any]
    model_type: str
    calibration: dict[str, Any] | None
    started_at: str
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedule: dict[str, Any] | None = None
    sparsity: dict[str, Any] | None = None
    seconds: float = 0.0
    peak_rss_mib: float = 0.0
    versions: dict[str, str] = field(default_factory=library_versions)

    @classmethod
    def start(cls, model, config, calib) -> PruningReport:
        provenance = calib.provenance() if calib is not None else None
        return cls(
            config=config.to_dict(),
            model_type=model.config.model_type,
            calibration=provenance,
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def add_module(self, name: str, **values: Any) -> None:
        self.modules[name] = {k: v for k, v in values.items() if v is not None}

    def finish(self, sparsity, seconds: float) -> None:
        self.sparsity = sparsity.to_dict()
        self.seconds = seconds
        self.peak_rss_mib = peak_rss_mib()

    @property
    def cholesky_retries(self) -> int:
        return sum(m.get("cholesky_retries", 0) for m in self.modules.values())

    def summary(self) -> str:
        total = self.sparsity["total_decoder_sparsity"] if self.sparsity else float("nan")
        return (f"{len(self.modules)} modules, decoder sparsity {total:.2%}, {self.seconds:.1f} s, "
                f"peak RSS {self.peak_rss_mib:.0f} MiB, Cholesky retries {self.cholesky_retries}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config, "model_type": self.model_type, "calibration": self.calibration,
            "started_at": self.started_at, "seconds": self.seconds, "peak_rss_mib": self.peak_rss_mib,
            "cholesky_retries": self.cholesky_retries, "schedule": self.schedule, "versions": self.versions,
            "sparsity": self.sparsity, "modules": self.modules,
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return path
