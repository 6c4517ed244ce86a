"""Training-time sparsity: masks kept during fine-tuning, gradual pruning, masked LoRA, time budgets."""

from .budget import TimeBudgetCallback
from .gradual import GradualPruningCallback, cubic_sparsity
from .masked_lora import MaskedLoraLinear, masked_merge, merge_lora_keep_masks
from .masks import SparseMaskCallback

__all__ = [
    "GradualPruningCallback",
    "MaskedLoraLinear",
    "SparseMaskCallback",
    "TimeBudgetCallback",
    "cubic_sparsity",
    "masked_merge",
    "merge_lora_keep_masks",
]
