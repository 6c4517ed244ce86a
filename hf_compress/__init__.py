"""hf-compress: prune, distil, recover, quantize and release Hugging Face models."""

from .api import prune
from .config import PrunerConfig
from .recipes import Recipe, run_recipe
from .sparsity import SparsityReport, sparsity_report

__all__ = ["PrunerConfig", "Recipe", "SparsityReport", "prune", "run_recipe", "sparsity_report"]
__version__ = "0.1.0"
