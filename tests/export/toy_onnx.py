"""A hand-built ONNX causal LM with a KV cache, so the ONNX Runtime runner is tested without an exporter.

The model: ``h_t = sum_{i<=t} E[x_i]`` (the running sum of token embeddings, kept in the cache as
the "keys"; the "values" hold ``2 E[x_i]``), ``logits_t = h_t @ W``. Its exact numpy reference is
:func:`reference_logits`. Two naming conventions: Optimum's (``past_key_values.0.key`` ...,
``attention_mask`` and ``position_ids`` inputs) and transformers.exporters' (``input.cache.layers.0.keys``
..., no attention mask).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB, WIDTH = 320, 4


def weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(VOCAB, WIDTH)).astype(np.float32), rng.normal(size=(WIDTH, VOCAB)).astype(
        np.float32
    )


def reference_logits(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """``[b, s, vocab]`` float64 logits of the toy model."""
    emb, head = weights(seed)
    return np.cumsum(emb[ids].astype(np.float64), axis=1) @ head.astype(np.float64)


def build(path: str | Path, style: str = "optimum", seed: int = 0) -> Path:
    """Write the toy graph to ``path`` (``style``: ``"optimum"`` or ``"transformers"``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    emb, head = weights(seed)
    if style == "optimum":
        past = ("past_key_values.0.key", "past_key_values.0.value")
        present = ("present.0.key", "present.0.value")
        extra = [
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["b", "s"]),
        ]
    else:
        past = ("input.cache.layers.0.keys", "input.cache.layers.0.values")
        present = ("output.cache.layers.0.keys", "output.cache.layers.0.values")
        extra = [helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "s"])]
    cache_shape = ["b", 1, "p", WIDTH]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
        *extra,
        *(helper.make_tensor_value_info(name, TensorProto.FLOAT, cache_shape) for name in past),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", VOCAB]),
        *(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", 1, "t", WIDTH]) for name in present),
    ]
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["new"]),  # [b, s, w]
        helper.make_node("Unsqueeze", ["new", "one"], ["new4"]),  # [b, 1, s, w]
        helper.make_node("Concat", [past[0], "new4"], [present[0]], axis=2),
        helper.make_node("Mul", ["new4", "two"], ["new4x2"]),
        helper.make_node("Concat", [past[1], "new4x2"], [present[1]], axis=2),
        helper.make_node("CumSum", [present[0], "two_i"], ["run"]),  # [b, 1, t, w]
        helper.make_node("Shape", [past[0]], ["past_shape"]),
        helper.make_node("Gather", ["past_shape", "two_i"], ["p"], axis=0),
        helper.make_node("Unsqueeze", ["p", "zero"], ["starts"]),
        helper.make_node("Slice", ["run", "starts", "big", "two_1d"], ["tail"]),  # [b, 1, s, w]
        helper.make_node("Squeeze", ["tail", "one"], ["h"]),  # [b, s, w]
        helper.make_node("MatMul", ["h", "W"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(emb, "E"),
        numpy_helper.from_array(head, "W"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        numpy_helper.from_array(np.array(2, dtype=np.int64), "two_i"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "two_1d"),
        numpy_helper.from_array(np.array([2**62], dtype=np.int64), "big"),
    ]
    graph = helper.make_graph(nodes, "toy", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path
