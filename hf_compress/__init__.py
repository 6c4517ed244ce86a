"""hf-compress: prune, distil, recover, quantize and release Hugging Face models.

Importing the package registers the ``from_pretrained`` hook for ``PrunerConfig`` (idempotent).
Heavier parts (distillation, recovery, export) load on first attribute access.
"""

from importlib import import_module

from .api import prune
from .config import PrunerConfig
from .fetch import KNOWN_MODELS, fetch_model
from .portable import atomic_dir, save_pretrained_portable
from .recipes import Recipe, run_recipe
from .sparsity import SparsityReport, sparsity_report

_LAZY = {
    "calibration_windows": "calibration",
    "load_texts": "calibration",
    "CalibrationSet": "calibration",
    "check_tokenizer_roundtrip": "calibration",
    "TokenizerRoundTripError": "calibration",
    "perplexity": "evaluate",
    "latency": "evaluate",
    "model_size": "evaluate",
    "StructuredConfig": "structured",
    "prune_structured": "structured",
    "DistillationConfig": "distill",
    "DistillationTrainer": "distill",
    "cache_teacher_topk": "distill",
    "RecoveryConfig": "recover",
    "recover_with_lora": "recover",
    "export_onnx": "export",
    "ExportConfig": "export",
    "create_model_card": "hub",
    "push_to_hub": "push",
}

__all__ = [
    "KNOWN_MODELS",
    "PrunerConfig",
    "Recipe",
    "SparsityReport",
    "atomic_dir",
    "fetch_model",
    "prune",
    "run_recipe",
    "save_pretrained_portable",
    "sparsity_report",
    *_LAZY,
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hf_compress' has no attribute {name!r}")


def _register_hook() -> None:
    from .integrations.transformers import register

    register()


_register_hook()
