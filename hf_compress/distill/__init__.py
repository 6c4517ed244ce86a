"""Knowledge distillation: a TRL ``SFTTrainer`` subclass, its config, losses and an offline teacher cache."""

from .distillation_config import DistillationConfig
from .distillation_trainer import DistillationTrainer
from .heads import TokenizerMismatchError
from .teacher_cache import cache_teacher_topk, load_teacher_cache

__all__ = [
    "DistillationConfig",
    "DistillationTrainer",
    "TokenizerMismatchError",
    "cache_teacher_topk",
    "load_teacher_cache",
]
