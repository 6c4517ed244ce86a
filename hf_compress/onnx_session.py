"""Run exported ONNX graphs with ONNX Runtime: causal LMs with their KV cache, and classifiers.

One runner serves both export paths, so every figure (parity, perplexity, latency, generation)
is measured the same way whichever exporter wrote the graph:

* Optimum (``main_export(task="text-generation-with-past")``): inputs ``input_ids``,
  ``attention_mask``, ``position_ids``, ``past_key_values.{i}.key|value``; outputs ``logits``,
  ``present.{i}.key|value``.
* transformers' exporter (``transformers.exporters.OnnxExporter``, multi-token decode graph):
  inputs ``input_ids``, ``position_ids``, ``input.cache.layers.{i}.keys|values``; outputs ``logits``,
  ``output.cache.layers.{i}.keys|values``.

A prefill is a decode step on an empty (length-0) cache. Each cache input's head count and head
width are read from the graph (so per-layer KV heads work), else from ``config.json`` beside it.
Only ``numpy``, ``onnxruntime`` and ``torch`` are imported, so this runs in any environment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

_PAST = re.compile(r"^(?:past_key_values|input\.cache\.layers)\.(\d+)\.(key|value)s?$")
_PRESENT = re.compile(r"^(?:present|output\.cache\.layers)\.(\d+)\.(key|value)s?$")
_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime options with ``threads`` intra-op threads (default: torch's thread count).

    ONNX Runtime otherwise sizes its pool from every core of the machine, not the ones this process
    may use, which makes timings incomparable with PyTorch's.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def open_session(path: str | Path, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on CPU for the graph file ``path``."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX graph at {str(path)!r}")
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class _CacheSlot:
    """One cache tensor: the graph input that takes it and the output that returns it grown."""

    input_name: str
    output_name: str
    heads: int
    width: int
    dtype: Any


class OnnxCausalLM:
    """A causal-LM ONNX graph with a KV cache, run by ONNX Runtime.

    Example::

        lm = OnnxCausalLM("out/model_quantized.onnx")
        logits = lm.logits(ids)                      # [b, s, vocab] float32 torch tensor
        tokens = lm.generate(ids, max_new_tokens=16)  # greedy, with the cache
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, config: dict | None = None):
        self.path = Path(path)
        self.session = open_session(self.path, threads)
        self.config = config if config is not None else _sibling_config(self.path)
        inputs = {spec.name: spec for spec in self.session.get_inputs()}
        outputs = [spec.name for spec in self.session.get_outputs()]
        if "input_ids" not in inputs or "logits" not in outputs:
            raise ValueError(
                f"{self.path.name} is not a causal-LM graph: inputs {sorted(inputs)}, outputs {outputs}"
            )
        self.input_names = set(inputs)
        self.slots = _cache_slots(inputs, outputs, self.config, self.path)
        self.output_names = outputs

    @property
    def has_cache(self) -> bool:
        return bool(self.slots)

    def empty_cache(self, batch: int = 1) -> list[np.ndarray]:
        """Length-0 cache tensors for a prefill."""
        return [np.zeros((batch, s.heads, 0, s.width), dtype=s.dtype) for s in self.slots]

    def forward(
        self, input_ids: np.ndarray | torch.Tensor, cache: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step: ``input_ids [b, s]`` after ``cache`` -> ``(logits [b, s, vocab], grown cache)``."""
        ids = np.ascontiguousarray(_numpy(input_ids), dtype=np.int64)
        batch, length = ids.shape
        cache = self.empty_cache(batch) if cache is None and self.has_cache else cache or []
        past = cache[0].shape[2] if cache else 0
        feeds: dict[str, np.ndarray] = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = np.ones((batch, past + length), dtype=np.int64)
        if "position_ids" in self.input_names:
            positions = np.arange(past, past + length, dtype=np.int64)
            feeds["position_ids"] = np.broadcast_to(positions, (batch, length)).copy()
        for slot, tensor in zip(self.slots, cache, strict=True):
            feeds[slot.input_name] = tensor
        wanted = ["logits", *(s.output_name for s in self.slots)]
        result = self.session.run(wanted, feeds)
        return result[0], result[1:]

    def logits(self, input_ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` (float32 torch tensor) of a prefill from an empty cache."""
        return torch.from_numpy(np.asarray(self.forward(input_ids)[0], dtype=np.float32))

    def generate(
        self, input_ids: np.ndarray | torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None
    ) -> torch.Tensor:
        """Greedy generation with the cache; returns ``[b, s + new]`` token ids (prompt included)."""
        ids = np.ascontiguousarray(_numpy(input_ids), dtype=np.int64)
        logits, cache = self.forward(ids)
        out = [ids]
        for _ in range(max_new_tokens):
            token = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
            out.append(token)
            if eos_token_id is not None and bool((token == eos_token_id).all()):
                break
            logits, cache = self.forward(token, cache)
        return torch.from_numpy(np.concatenate(out, axis=1))


def run_classifier(
    session: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits of an encoder/classifier graph; feeds ``token_type_ids`` zeros when the graph takes it."""
    names = {spec.name for spec in session.get_inputs()}
    ids = _numpy(input_ids).astype(np.int64)
    mask = np.ones_like(ids) if attention_mask is None else _numpy(attention_mask).astype(np.int64)
    feeds = {"input_ids": ids}
    if "attention_mask" in names:
        feeds["attention_mask"] = mask
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    output = session.get_outputs()[0].name
    return torch.from_numpy(np.asarray(session.run([output], feeds)[0], dtype=np.float32))


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _sibling_config(path: Path) -> dict:
    for folder in (path.parent, path.parent.parent):
        file = folder / "config.json"
        if file.is_file():
            return json.loads(file.read_text(encoding="utf-8"))
    return {}


def _cache_slots(inputs: dict[str, Any], outputs: list[str], config: dict, path: Path) -> list[_CacheSlot]:
    present = {}
    for name in outputs:
        match = _PRESENT.match(name)
        if match:
            present[(int(match.group(1)), match.group(2))] = name
    slots = []
    for name, spec in inputs.items():
        match = _PAST.match(name)
        if not match:
            continue
        key = (int(match.group(1)), match.group(2))
        if key not in present:
            raise ValueError(f"{path.name}: cache input {name!r} has no matching output among {outputs}")
        heads, width = _kv_shape(spec.shape, config, name)
        slots.append(_CacheSlot(name, present[key], heads, width, _NP_TYPES.get(spec.type, np.float32)))
    slots.sort(key=lambda s: (int(_PAST.match(s.input_name).group(1)), _PAST.match(s.input_name).group(2)))
    return slots


def _kv_shape(shape: list[Any], config: dict, name: str) -> tuple[int, int]:
    """``(kv heads, head width)`` of a ``[batch, heads, seq, width]`` cache input."""
    dims = [_static(d) for d in shape]
    heads, width = (dims[1], dims[3]) if len(dims) == 4 else (None, None)
    if heads is None:
        heads = config.get("num_key_value_heads") or config.get("num_attention_heads")
    if width is None:
        width = config.get("head_dim") or (
            config["hidden_size"] // config["num_attention_heads"] if "hidden_size" in config else None
        )
    if not heads or not width:
        raise ValueError(f"cannot tell the KV head count / width of cache input {name!r} (shape {shape})")
    return int(heads), int(width)


def _static(dim: Any) -> int | None:
    if isinstance(dim, int):
        return dim
    if isinstance(dim, str) and dim.isdigit():
        return int(dim)
    return None
