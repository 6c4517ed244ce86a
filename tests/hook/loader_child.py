"""Run in another interpreter: load checkpoints the way a user without (then with) the plugin would.

Usage: ``python loader_child.py TASKS_JSON``; prints one ``RESULT {json}`` line per task. A task is
``{"name", "path", "plugin": bool, "prune": bool, "logits": file}`` (all but name/path optional) or
``{"name", "kind": "registered"}``. Tasks run in order and ``plugin`` imports hf_compress for good,
so put the plugin tasks last. Nothing here calls ``register()``: ``import hf_compress`` must do it.
"""

from __future__ import annotations

import json
import sys


def registered() -> dict:
    """What ``import hf_compress`` put in the registry, and whether re-importing it keeps that."""
    import importlib

    from transformers.quantizers import auto

    import hf_compress

    before = (auto.AUTO_QUANTIZATION_CONFIG_MAPPING.get("hf_compress"), auto.AUTO_QUANTIZER_MAPPING.get("hf_compress"))
    importlib.reload(hf_compress)
    after = (auto.AUTO_QUANTIZATION_CONFIG_MAPPING.get("hf_compress"), auto.AUTO_QUANTIZER_MAPPING.get("hf_compress"))
    names = [None if cls is None else cls.__name__ for cls in before]
    return {"ok": before == after and None not in before, "config": names[0], "quantizer": names[1]}


def load(task: dict):
    from transformers import AutoModelForCausalLM

    kwargs = {}
    if task.get("prune"):
        import hf_compress

        kwargs["quantization_config"] = hf_compress.PrunerConfig(method="magnitude")
    return AutoModelForCausalLM.from_pretrained(task["path"], **kwargs)


def run(task: dict) -> dict:
    if task.get("kind") == "registered":
        return registered()
    if task.get("plugin"):
        import hf_compress  # noqa: F401 - the import registers the hook
    plugin_loaded = "hf_compress" in sys.modules
    try:
        model = load(task)
    except Exception as error:  # noqa: BLE001 - the error is the result
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "plugin": plugin_loaded}
    result = {"ok": True, "plugin": plugin_loaded, "quantized": bool(getattr(model, "is_quantized", False))}
    if task.get("logits"):
        import torch

        data = torch.load(task["logits"])
        with torch.no_grad():
            result["maxdiff"] = (model(data["x"]).logits - data["logits"]).abs().max().item()
    return result


if __name__ == "__main__":
    for task in json.loads(sys.argv[1]):
        print("RESULT " + json.dumps({"name": task["name"], **run(task)}), flush=True)
