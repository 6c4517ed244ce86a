"""No silent wrong models: what other loaders do with our checkpoints (in subprocesses).

* transformers 5.x without ``import hf_compress``: compact / per-layer checkpoints stop with an error
  naming the plugin; even with that note stripped, the stored shapes make the load fail.
* transformers 4.57 (``HF_COMPRESS_COMPAT_PYTHON``): the same stop; with the plugin imported, the hook
  names the transformers version it needs.
* Dense exports (``model.dequantize()``) load anywhere with the same logits.

One subprocess per interpreter runs every check (see ``loader_child.py``); interpreter start-up
dominates the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_compress
from hf_compress.integrations.transformers import MARKER_KEY, MIN_TRANSFORMERS, attach_quantizer
from hf_compress.models import surgery
from hf_compress.portable import save_pretrained_portable
from tests.hook.conftest import REPO
from tests.tiny_models import random_tokens

CHILD = Path(__file__).with_name("loader_child.py")


def run_child(python: str, tasks: list[dict]) -> dict[str, dict]:
    tasks = [
        {**t, "path": str(t["path"]), **({"logits": str(t["logits"])} if "logits" in t else {})}
        for t in tasks
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [python, str(CHILD), json.dumps(tasks)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            entry = json.loads(line[len("RESULT ") :])
            results[entry.pop("name")] = entry
    assert proc.returncode == 0 and len(results) == len(tasks), proc.stdout + proc.stderr
    return results


@pytest.fixture(scope="module")
def saved(tiny_dir, tmp_path_factory):
    """``compact`` (2:4), ``per_layer`` (heterogeneous, dense weights), ``dense`` (dequantized),
    ``portable`` (dequantized, 4.57-readable config) and ``stripped`` (compact without the note)."""
    root = tmp_path_factory.mktemp("loaders")
    config = hf_compress.PrunerConfig(method="magnitude", pattern="2:4", sparsity=None)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir["llama"], quantization_config=config)
    model.save_pretrained(root / "compact")
    x = random_tokens(2, 12)
    with torch.no_grad():
        torch.save({"x": x, "logits": model(x).logits}, root / "logits.pt")
    model.dequantize()
    model.save_pretrained(root / "dense")
    save_pretrained_portable(model, None, root / "portable")
    hetero = AutoModelForCausalLM.from_pretrained(tiny_dir["llama"])
    surgery.prune_ffn(hetero, {0: list(range(48))})
    attach_quantizer(hetero, compact=False).save_pretrained(root / "per_layer")
    stripped = root / "stripped"
    stripped.mkdir()
    record = json.loads((root / "compact" / "config.json").read_text())
    del record[MARKER_KEY]
    (stripped / "config.json").write_text(json.dumps(record))
    (stripped / "model.safetensors").write_bytes((root / "compact" / "model.safetensors").read_bytes())
    return root


@pytest.fixture(scope="module")
def plain(saved):
    """Results in this interpreter's transformers, hf_compress never imported."""
    return run_child(
        sys.executable,
        [
            {"name": "compact", "kind": "load", "path": saved / "compact"},
            {"name": "per_layer", "kind": "load", "path": saved / "per_layer"},
            {"name": "stripped", "kind": "load", "path": saved / "stripped"},
            {"name": "dense", "kind": "logits", "path": saved / "dense", "logits": saved / "logits.pt"},
        ],
    )


@pytest.fixture(scope="module")
def compat(saved, tiny_dir, compat_python):
    """Results in transformers 4.57: first without the plugin, then with it imported."""
    return run_child(
        compat_python,
        [
            {"name": "compact", "kind": "load", "path": saved / "compact"},
            {"name": "per_layer", "kind": "load", "path": saved / "per_layer"},
            {"name": "portable", "kind": "logits", "path": saved / "portable", "logits": saved / "logits.pt"},
            {"name": "plugin_prune", "kind": "plugin_prune", "path": tiny_dir["llama"]},
            {"name": "plugin_compact", "kind": "plugin_load", "path": saved / "compact"},
        ],
    )


@pytest.mark.parametrize("name", ["compact", "per_layer"])
def test_plain_transformers_stops_and_names_the_plugin(plain, name):
    result = plain[name]
    assert not result["ok"] and not result["plugin"]
    assert "pip install hf-compress" in result["error"] and "import hf_compress" in result["error"]


def test_without_the_note_the_stored_shapes_still_fail(plain):
    result = plain["stripped"]
    assert not result["ok"] and "ignore_mismatched_sizes" in result["error"]


def test_dense_export_loads_without_the_plugin(plain):
    assert plain["dense"] == {"ok": True, "plugin": False, "maxdiff": 0.0}


@pytest.mark.parametrize("name", ["compact", "per_layer"])
def test_transformers_457_stops_on_our_checkpoints(compat, name):
    result = compat[name]
    assert not result["ok"] and not result["plugin"]
    assert "import hf_compress" in result["error"] and f"transformers>={MIN_TRANSFORMERS}" in result["error"]


def test_transformers_457_loads_the_portable_dense_export(compat):
    assert compat["portable"]["ok"] and compat["portable"]["maxdiff"] < 1e-5


def test_transformers_457_hook_names_the_version_it_needs(compat):
    prune, load = compat["plugin_prune"], compat["plugin_compact"]
    assert prune["plugin"] and not prune["ok"]
    assert f"needs transformers>={MIN_TRANSFORMERS}" in prune["error"] and "4.57" in prune["error"]
    assert not load["ok"] and f"transformers>={MIN_TRANSFORMERS}" in load["error"]
