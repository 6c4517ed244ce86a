"""``PrunerConfig`` as a ``from_pretrained`` hook, through transformers' quantizer registry.

What a user types (the shape of ``GPTQConfig(dataset=...)``)::

    import hf_compress
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=hf_compress.PrunerConfig(method="sparsegpt", pattern="2:4",
                                                            dataset=texts, tokenizer=tok))
    model.save_pretrained(out)                    # compact sparse weights, record in config.json
    AutoModelForCausalLM.from_pretrained(out)     # the same model, bit for bit

Pieces:

* :class:`HfCompressConfig` (``quant_method="hf_compress"``) is what ``config.json`` records: the
  pruning settings, the storage format of each compacted projection and the per-layer sizes of a
  structurally pruned model. A ``PrunerConfig`` passed to ``from_pretrained`` is wrapped into one.
* :class:`HfCompressQuantizer` prunes after the weights load (plain checkpoint) or rebuilds
  per-layer shapes and decodes compact weights (hf-compress checkpoint), and writes the compact
  state dict on ``save_pretrained``. Models it returns are dense in memory and trainable.
* Storage: each sparse projection in its smallest exact layout (:mod:`hf_compress.compact`), then
  every large floating tensor byte-plane coded (:mod:`hf_compress.byte_planes`, lossless; off with
  ``entropy_coding=False``). SmolLM2-135M at 50 %: 2.04x smaller than dense in fp32, 2.13x in bf16.
* No silent wrong models: a checkpoint that needs the plugin stores compacted weights under their
  usual names with shapes no plain loader accepts, and its ``config.json`` names the plugin in
  ``transformers_weights`` so plain transformers (4.57 and 5.x) stops with that text before loading.
* Dense saving stays one call away: ``model.dequantize()`` (uniform shapes) gives a plain model whose
  ``save_pretrained`` loads anywhere; ``HfCompressConfig(compact=False)`` keeps the hook but
  stores dense weights (``model.config.quantization_config.compact = False`` on a loaded model).
* Models pruned in memory (``prune()``, structured surgery) save the same way after
  :func:`attach_quantizer`. Like every quantized model, they refuse ``.half()`` / ``.float()``:
  use ``.to(dtype)``.

Registered by :func:`register` (idempotent; ``import hf_compress`` calls it). On transformers older
than :data:`MIN_TRANSFORMERS` the registered quantizer (:mod:`.transformers_legacy`) raises an error
naming the version, except for dense-saved records, which load as plain models.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import transformers
from packaging.version import Version
from transformers.quantizers import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..coded_state import code_state_dict, decode_into, model_dtypes, without_aliases
from ..compact import BITMASK, add_compact_slots, compact_state_dict, parse_nm, restore_dense
from ..config import PrunerConfig
from ..heterogeneous import apply_recorded_layers, layers_to_record

logger = logging.getLogger(__name__)

QUANT_METHOD = "hf_compress"
MIN_TRANSFORMERS = "5.25"
FORMAT_VERSION = 2
MARKER_KEY = "transformers_weights"
MARKER = (
    "[hf-compress checkpoint] these weights are stored compactly and/or with per-layer shapes, which "
    "plain transformers cannot load. They need the hf-compress plugin: `pip install hf-compress` and "
    f"`import hf_compress` before from_pretrained (needs transformers>={MIN_TRANSFORMERS}); "
    "or ask the author for the dense export."
)
_SERIALIZED = (
    "quant_method",
    "format_version",
    "compact",
    "entropy_coding",
    "pruning",
    "modules",
    "coded",
    "layers",
    "sparsity",
)


class HfCompressConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of an hf-compress model (what ``config.json`` records).

    Args:
        pruning: the ``PrunerConfig.to_dict()`` that was applied (``None`` if none).
        compact: store sparse projections compactly on ``save_pretrained`` (default) or dense.
        entropy_coding: with ``compact``, also byte-plane code every large floating tensor
            (:mod:`hf_compress.byte_planes`, lossless) where that makes it smaller (default).
        modules: ``{module name: "bitmask" | "N:M"}`` of the compacted projections (set on save).
        coded: names of the tensors stored byte-plane coded (set on save).
        layers: per-block ``{"num_heads", "num_kv_heads", "head_dim", "ffn"}`` when the blocks differ
            from what the global config builds (structured pruning; set on save), else ``None``.
        sparsity: realised sparsity of the decoder projections (at pruning, then at each save).
        pruner: runtime only: the ``PrunerConfig`` (with ``dataset`` / ``tokenizer``) to run at load.
    """

    def __init__(
        self,
        pruning: dict[str, Any] | None = None,
        compact: bool = True,
        modules: dict[str, str] | None = None,
        entropy_coding: bool = True,
        coded: list[str] | None = None,
        layers: list[dict[str, int]] | None = None,
        sparsity: float | None = None,
        format_version: int = FORMAT_VERSION,
        quant_method: str = QUANT_METHOD,
        pruner: PrunerConfig | None = None,
    ):
        self.quant_method = quant_method
        self.format_version = format_version
        self.compact = compact
        self.entropy_coding = entropy_coding
        self.coded = sorted(coded or [])
        self.pruner = pruner
        self.pruning = pruner.to_dict() if pruning is None and pruner is not None else pruning
        self.modules = dict(modules or {})
        self.layers = [dict(shape) for shape in layers] if layers else None
        self.sparsity = sparsity
        self._validate()

    def _validate(self) -> None:
        if self.quant_method != QUANT_METHOD:
            raise ValueError(f"quant_method={self.quant_method!r} must be {QUANT_METHOD!r}")
        if not isinstance(self.format_version, int) or self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"format_version={self.format_version!r}: this checkpoint was written by a newer hf-compress "
                f"(this one reads format {FORMAT_VERSION}); upgrade with `pip install -U hf-compress`"
            )
        for field in ("compact", "entropy_coding"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field}={getattr(self, field)!r} must be True or False")
        if self.pruner is not None and not isinstance(self.pruner, PrunerConfig):
            raise TypeError(f"pruner must be a hf_compress.PrunerConfig, got {type(self.pruner).__name__}")
        for name, fmt in self.modules.items():
            if fmt != BITMASK and not _is_nm(fmt):
                raise ValueError(
                    f"modules[{name!r}]={fmt!r} is not a storage format; allowed: 'bitmask', 'N:M'"
                )

    @classmethod
    def from_pruner(cls, pruner: PrunerConfig, **kwargs: Any) -> HfCompressConfig:
        """Wrap a ``PrunerConfig`` (with its runtime ``dataset`` / ``tokenizer``) for the hook."""
        return cls(pruner=pruner, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs: Any):
        unknown = sorted(set(config_dict) - set(_SERIALIZED))
        if unknown:
            raise ValueError(
                f"quantization_config has unknown hf_compress field(s) {unknown}; allowed: {list(_SERIALIZED)}. "
                "It was probably written by a newer hf-compress: `pip install -U hf-compress`"
            )
        return super().from_dict(dict(config_dict), return_unused_kwargs=return_unused_kwargs, **kwargs)

    @property
    def needs_plugin(self) -> bool:
        """True when plain transformers cannot load the saved checkpoint (compacted or per-layer shapes)."""
        return bool(self.modules or self.layers or self.coded)

    def to_dict(self) -> dict[str, Any]:
        return {key: copy.deepcopy(getattr(self, key)) for key in _SERIALIZED}

    def __iter__(self):
        yield from self.to_dict().items()

    def __deepcopy__(self, memo: dict) -> HfCompressConfig:
        # from_pretrained deep-copies the model config; share the runtime calibration data instead.
        out = HfCompressConfig.from_dict(self.to_dict())
        out.pruner = self.pruner
        return out


class HfCompressQuantizer(HfQuantizer):
    """Prunes at load, rebuilds per-layer shapes, decodes / writes compact weights."""

    requires_calibration = False

    def __init__(self, quantization_config: HfCompressConfig | PrunerConfig, **kwargs: Any):
        if isinstance(quantization_config, PrunerConfig):
            quantization_config = HfCompressConfig.from_pruner(quantization_config)
        if not isinstance(quantization_config, HfCompressConfig):
            raise TypeError(
                f"quantization_config must be a hf_compress.PrunerConfig or HfCompressConfig, "
                f"got {type(quantization_config).__name__}"
            )
        super().__init__(quantization_config, **kwargs)
        self._dense_shapes: dict[str, tuple[int, int]] = {}
        self._coded_dtypes: dict[str, Any] = {}

    # ------------------------------------------------------------------ before loading

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        """Check the request before any weight is read."""
        config = self.quantization_config
        if self.pre_quantized:
            return
        pruner = config.pruner
        if pruner is None:
            raise ValueError(
                "quantization_config has no pruning to run on a plain checkpoint: pass "
                "hf_compress.PrunerConfig(method=..., sparsity=..., dataset=..., tokenizer=...)"
            )
        if pruner.needs_calibration and pruner.dataset is None:
            raise ValueError(
                f"PrunerConfig(method={pruner.method!r}, schedule={pruner.schedule!r}) prunes with calibration data: "
                "pass dataset=... (texts, a file, a Hub dataset name or a [n, T] token tensor) and tokenizer=..."
            )
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("pruning at load does not support disk offload (device_map with 'disk')")

    def update_attn_implementation(self, config: Any) -> Any:
        """Runs before the weights are found: drop the plain-loader stop sign, keep our config object."""
        if MARKER_KEY in config.__dict__ and str(config.__dict__[MARKER_KEY]).startswith("[hf-compress"):
            del config.__dict__[MARKER_KEY]
        config.quantization_config = self.quantization_config
        return config

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        config = self.quantization_config
        if self.pre_quantized:
            if config.layers:
                apply_recorded_layers(model, config.layers)
            self._dense_shapes = add_compact_slots(model, config.modules)
            self._coded_dtypes = model_dtypes(model, config.coded)
        return model

    def param_needs_quantization(self, model: Any, param_name: str, **kwargs: Any) -> bool:
        """Compacted weights, their indices and coded streams arrive in their stored shapes (no size-mismatch error)."""
        if not self.pre_quantized:
            return False
        module, _, attr = param_name.rpartition(".")
        compacted = module in self._dense_shapes and (attr == "weight" or attr.startswith("weight_"))
        return compacted or param_name in self._coded_dtypes

    # ------------------------------------------------------------------ after loading

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        config = self.quantization_config
        if self.pre_quantized:
            decode_into(model, self._coded_dtypes)
            restore_dense(model, config.modules, self._dense_shapes)
            if self._coded_dtypes:
                model.tie_weights()  # tied copies were tied to the coded streams while loading
        else:
            self._prune(model)
        model.config.quantization_config = config
        return model

    def _prune(self, model: Any) -> None:
        from ..api import prune

        config = self.quantization_config
        pruner = config.pruner
        tokenizer = pruner.tokenizer
        if tokenizer is None and pruner.needs_calibration and _is_text(pruner.dataset):
            tokenizer = _tokenizer_of(model)
        prune(model, pruner, pruner.dataset, tokenizer)
        config.sparsity = model.hf_compress_report.sparsity["total_decoder_sparsity"]

    # ------------------------------------------------------------------ saving

    def get_state_dict_and_metadata(self, model: Any) -> tuple[dict | None, dict[str, str]]:
        """Compact state dict (or ``None`` = dense) and record formats / per-layer sizes in the config."""
        from ..sparsity import sparsity_report

        config = self.quantization_config
        config.layers = layers_to_record(model)
        config.sparsity = sparsity_report(model).total
        state_dict, config.modules = (
            compact_state_dict(model, _pattern(config)) if config.compact else (None, {})
        )
        config.coded = []
        if config.compact and config.entropy_coding:
            state_dict, config.coded = code_state_dict(without_aliases(state_dict, model))
        if config.needs_plugin and _config_written_by_this_save(model):
            _stop_plain_loaders_on_next_save(model.config)
        return state_dict, {}

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        """Weights are plain dense tensors in memory: full fine-tuning and PEFT are allowed."""
        return True

    @property
    def is_compileable(self) -> bool:
        return True

    def _dequantize(self, model: Any, dtype: Any = None) -> Any:
        """``model.dequantize()``: keep the dense weights, drop the hook (uniform shapes only)."""
        if layers_to_record(model):
            raise ValueError(
                "this model has per-layer shapes, which only load through hf-compress; to store dense weights "
                "set model.config.quantization_config.compact = False instead of dequantize()"
            )
        config = self.quantization_config
        model.config.hf_compress = {"pruning": config.pruning, "sparsity": config.sparsity}
        return model


def _is_nm(fmt: str) -> bool:
    try:
        return parse_nm(fmt) is not None
    except ValueError:
        return False


def _pattern(config: HfCompressConfig) -> tuple[int, int] | None:
    """The N:M pattern the model was pruned to, if any (stored in that layout where it holds)."""
    pattern = (config.pruning or {}).get("pattern")
    return parse_nm(pattern) if pattern and pattern != "unstructured" else None


def _is_text(dataset: Any) -> bool:
    return isinstance(dataset, (str, Path)) or (
        isinstance(dataset, (list, tuple)) and bool(dataset) and isinstance(dataset[0], str)
    )


def _tokenizer_of(model: Any) -> Any:
    from transformers import AutoTokenizer

    source = getattr(model.config, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not source:
        raise ValueError("text calibration data needs a tokenizer: pass PrunerConfig(tokenizer=...)")
    logger.info("no tokenizer given: using the one saved with the model at %s", source)
    return AutoTokenizer.from_pretrained(source)


def _config_written_by_this_save(model: Any) -> bool:
    """``save_pretrained`` writes ``config.json`` unless it saves PEFT adapters or runs on rank > 0."""
    import torch.distributed as dist

    if getattr(model, "_hf_peft_config_loaded", False):
        return False
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def _stop_plain_loaders_on_next_save(config: Any) -> None:
    """Make this save's ``config.json`` carry :data:`MARKER` in ``transformers_weights``.

    ``PreTrainedConfig.save_pretrained`` deletes that key before writing, so the key is added to the
    file right after it is written (one-shot wrapper, removed before the original method runs).
    """
    original = type(config).save_pretrained

    def save_then_mark(save_directory: str, *args: Any, **kwargs: Any) -> Any:
        config.__dict__.pop("save_pretrained", None)
        result = original(config, save_directory, *args, **kwargs)
        add_marker(Path(save_directory) / "config.json")
        return result

    config.__dict__["save_pretrained"] = save_then_mark


def add_marker(config_file: str | Path) -> None:
    """Write :data:`MARKER` into ``config_file`` (plain transformers stops on it, naming the plugin)."""
    path = Path(config_file)
    data = json.loads(path.read_text(encoding="utf-8"))
    data[MARKER_KEY] = MARKER
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def needs_newer_transformers(what: str) -> str:
    """The error text for a hook feature used on transformers older than :data:`MIN_TRANSFORMERS`."""
    return (
        f"hf_compress's from_pretrained hook ({what}) needs transformers>={MIN_TRANSFORMERS}; this "
        f"environment has {transformers.__version__}: `pip install -U 'transformers>={MIN_TRANSFORMERS}'`. "
        "Dense-saved and uniformly pruned checkpoints load here without the hook."
    )


def supported() -> bool:
    """True when the installed transformers has the hook API this module uses."""
    return Version(transformers.__version__).release >= Version(MIN_TRANSFORMERS).release


def register() -> None:
    """Register ``hf_compress`` with transformers' quantizer registry (idempotent)."""
    from transformers.quantizers import auto

    from .transformers_legacy import OlderTransformersQuantizer

    quantizer = HfCompressQuantizer if supported() else OlderTransformersQuantizer
    if auto.AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not HfCompressConfig:
        auto.AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)
        auto.register_quantization_config(QUANT_METHOD)(HfCompressConfig)
    if auto.AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not quantizer:
        auto.AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
        auto.register_quantizer(QUANT_METHOD)(quantizer)


def attach_quantizer(
    model: Any, pruner: PrunerConfig | None = None, *, compact: bool = True, entropy_coding: bool = True
) -> Any:
    """Give a model pruned in memory (``prune()``, structured surgery) the hook's saving behaviour.

    After this, ``model.save_pretrained`` writes compact weights / per-layer shapes and the record,
    exactly as for a model pruned through ``from_pretrained``. Returns ``model``.
    """
    register()
    if not supported():
        raise RuntimeError(needs_newer_transformers("saving pruned models through the hook"))
    existing = getattr(model, "hf_quantizer", None)
    if existing is not None and not isinstance(existing, HfCompressQuantizer):
        raise ValueError(
            f"model is already quantized with {type(existing).__name__}; cannot attach hf_compress"
        )
    config = HfCompressConfig(pruner=pruner, compact=compact, entropy_coding=entropy_coding)
    config.pruner = None  # the calibration data is not needed any more
    quantizer = HfCompressQuantizer(config, pre_quantized=False)
    model.hf_quantizer = quantizer
    model.is_quantized = True
    model.quantization_method = QUANT_METHOD
    model.config.quantization_config = config
    return model
