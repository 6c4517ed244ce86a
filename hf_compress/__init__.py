"""hf-compress: prune, distil, recover, quantize and release Hugging Face models."""

from .api import prune
from .config import PrunerConfig
from .fetch import KNOWN_MODELS, fetch_model
from .portable import atomic_dir, save_pretrained_portable
from .recipes import Recipe, run_recipe
from .sparsity import SparsityReport, sparsity_report

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
]
__version__ = "0.1.0"
