"""The quantizer registered on transformers older than the hook needs (e.g. 4.57, Optimum's stack).

Pruning at load, compact weights and per-layer shapes need the 5.x hook API: asking for them raises
an error naming the version. A dense-saved record (``compact=False``, uniform shapes) holds plain
weights, so it loads as a plain model here too, ``import hf_compress`` or not.
"""

from __future__ import annotations

from typing import Any

from transformers.quantizers import HfQuantizer

from .transformers import HfCompressConfig, needs_newer_transformers


class OlderTransformersQuantizer(HfQuantizer):
    """Pass-through for dense-saved records; a clear version error for everything else."""

    requires_calibration = False

    def __init__(self, quantization_config: Any, **kwargs: Any):
        pre_quantized = kwargs.get("pre_quantized", True)
        if not pre_quantized:
            raise RuntimeError(needs_newer_transformers("pruning while loading"))
        if not isinstance(quantization_config, HfCompressConfig) or quantization_config.needs_plugin:
            raise RuntimeError(needs_newer_transformers("compact weights / per-layer shapes"))
        super().__init__(quantization_config, **kwargs)

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        return model

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        return model

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return True
