"""Run in another interpreter: load checkpoints the way a user without (then with) the plugin would.

Usage: ``python loader_child.py TASKS_JSON``; prints one ``RESULT {json}`` line per task. Tasks run in
order; every ``plugin_*`` task imports hf_compress first, so put them last.
"""

from __future__ import annotations

import json
import sys


def load(path: str, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def run(task: dict) -> dict:
    kind = task["kind"]
    if kind.startswith("plugin"):
        import hf_compress
        from hf_compress.integrations.transformers import register

        register()
        if kind == "plugin_prune":
            task = {**task, "kwargs": {"quantization_config": hf_compress.PrunerConfig(method="magnitude")}}
    plugin_loaded = "hf_compress" in sys.modules
    try:
        model = load(task["path"], **task.get("kwargs", {}))
    except Exception as error:  # noqa: BLE001 - the error is the result
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "plugin": plugin_loaded}
    result = {"ok": True, "plugin": plugin_loaded}
    if kind == "logits":
        import torch

        data = torch.load(task["logits"])
        with torch.no_grad():
            result["maxdiff"] = (model(data["x"]).logits - data["logits"]).abs().max().item()
    return result


if __name__ == "__main__":
    for task in json.loads(sys.argv[1]):
        print("RESULT " + json.dumps({"name": task["name"], **run(task)}), flush=True)
