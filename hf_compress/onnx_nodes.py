"""Picking ``MatMul`` nodes of an ONNX graph by regex, for both exporters' naming schemes.

Optimum names nodes after module paths (``/model/layers.0/mlp/down_proj/MatMul``);
``torch.onnx``/``transformers.exporters`` names them ``node_linear_12`` and keeps the module path in
the node's ``namespace`` metadata. Both are searched. Needs only the ``onnx`` protobufs or an
``onnx_ir`` graph, so it runs in the main and in the Optimum environment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


def _namespace(node: Any) -> str:
    props = node.metadata_props
    if isinstance(props, dict):  # onnx_ir
        return props.get("namespace", "")
    return next((p.value for p in props if p.key == "namespace"), "")  # onnx protobuf


def matmuls_named(nodes: Iterable[Any], patterns: tuple[str, ...]) -> list[str]:
    """Names of the ``MatMul`` nodes whose name or module path matches one of ``patterns`` (``re.search``).

    Raises:
        ValueError: patterns were given but match no MatMul (a typo would otherwise quantize everything).
    """
    if not patterns:
        return []
    matmuls = [node for node in nodes if node.op_type == "MatMul"]
    chosen = [n.name for n in matmuls if any(re.search(p, n.name) or re.search(p, _namespace(n)) for p in patterns)]
    if not chosen:
        example = f"{matmuls[0].name} {_namespace(matmuls[0])}".strip() if matmuls else "(no MatMul at all)"
        raise ValueError(
            f"fp32_layers {list(patterns)} match no MatMul node of the graph; patterns are searched in node "
            f"names and module paths, e.g. {example[-160:]!r}"
        )
    return chosen
