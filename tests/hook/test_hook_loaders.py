"""No silent wrong models: what other loaders do with our checkpoints (in subprocesses).

* transformers 5.x without ``import hf_compress``: compact / per-layer checkpoints stop with an error
  naming the plugin; even with that note stripped, the stored shapes make the load fail.
* transformers 4.57 (``HF_COMPRESS_COMPAT_PYTHON``): the same stop; with the plugin imported, the hook
  names the transformers version it needs.
* Dense saves (``model.dequantize()``, or ``compact=False`` with uniform shapes) and uniformly
  structured models load anywhere, plugin imported or not, with the same logits.
* ``import hf_compress`` alone (no ``register()`` call) registers the hook, idempotently, and a
  fresh interpreter then reloads a compact checkpoint exactly.

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
from hf_compress import byte_planes
from hf_compress.heterogeneous import layers_to_record
from hf_compress.integrations.transformers import MARKER_KEY, MIN_TRANSFORMERS, attach_quantizer
from hf_compress.models import surgery
from hf_compress.portable import save_pretrained_portable
from tests.hook.conftest import REPO
from tests.tiny_models import random_tokens

CHILD = Path(__file__).with_name("loader_child.py")


def run_child(python: str, tasks: list[dict]) -> dict[str, dict]:
    tasks = [
        {key: str(value) if isinstance(value, Path) else value for key, value in t.items()} for t in tasks
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


def save_logits(model, file: Path) -> None:
    x = random_tokens(2, 12)
    with torch.no_grad():
        torch.save({"x": x, "logits": model(x).logits}, file)


def uniform_structured(tiny_dir):
    """Two of three KV groups and half the FFN of every block: plain config, no hook needed."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir["llama"])
    surgery.prune_heads(model, {i: list(range(6)) for i in range(2)})
    surgery.prune_ffn(model, {i: list(range(48)) for i in range(2)})
    assert layers_to_record(model) is None and model.config.num_key_value_heads == 2
    return model


def strip_marker(source: Path, target: Path) -> None:
    target.mkdir()
    record = json.loads((source / "config.json").read_text())
    del record[MARKER_KEY]
    (target / "config.json").write_text(json.dumps(record))
    (target / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())


@pytest.fixture(scope="module")
def saved(tiny_dir, tmp_path_factory):
    """``compact`` (2:4), ``record_dense`` (the same weights dense, record kept), ``dense`` / ``portable``
    (dequantized), ``per_layer`` (heterogeneous, dense weights), ``uniform`` (uniform structured, no
    hook), ``stripped`` (compact without the note) and ``coded`` (dense weights, byte-plane coded: only
    the coding needs the plugin); ``*.pt`` hold reference logits."""
    root = tmp_path_factory.mktemp("loaders")
    config = hf_compress.PrunerConfig(method="magnitude", pattern="2:4", sparsity=None)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir["llama"], quantization_config=config)
    model.save_pretrained(root / "compact")
    save_logits(model, root / "logits.pt")
    model.config.quantization_config.compact = False
    save_pretrained_portable(model, None, root / "record_dense")
    model.dequantize()
    model.save_pretrained(root / "dense")
    save_pretrained_portable(model, None, root / "portable")
    hetero = AutoModelForCausalLM.from_pretrained(tiny_dir["llama"])
    surgery.prune_ffn(hetero, {0: list(range(48))})
    attach_quantizer(hetero, compact=False).save_pretrained(root / "per_layer")
    uniform = uniform_structured(tiny_dir)
    save_pretrained_portable(uniform, None, root / "uniform")
    save_logits(uniform, root / "uniform.pt")
    strip_marker(root / "compact", root / "stripped")
    coded = AutoModelForCausalLM.from_pretrained(tiny_dir["llama"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(byte_planes, "MIN_NUMEL", 256)
        attach_quantizer(coded).save_pretrained(root / "coded")
    assert json.loads((root / "coded" / "config.json").read_text())["quantization_config"]["coded"]
    save_logits(coded, root / "coded.pt")
    return root


def task(saved: Path, name: str, folder: str | None = None, logits: str | None = None, **kw) -> dict:
    out = {"name": name, "path": saved / (folder or name), **kw}
    return {**out, "logits": saved / logits} if logits else out


@pytest.fixture(scope="module")
def plain(saved):
    """Results in this interpreter's transformers: first without hf_compress, then after importing it."""
    return run_child(
        sys.executable,
        [
            task(saved, "compact"),
            task(saved, "per_layer"),
            task(saved, "coded"),
            task(saved, "stripped"),
            task(saved, "dense", logits="logits.pt"),
            task(saved, "record_dense", logits="logits.pt"),
            {"name": "registered", "kind": "registered"},
            task(saved, "plugin_compact", "compact", logits="logits.pt", plugin=True),
            task(saved, "plugin_per_layer", "per_layer", plugin=True),
            task(saved, "plugin_coded", "coded", logits="coded.pt", plugin=True),
        ],
    )


@pytest.fixture(scope="module")
def compat(saved, tiny_dir, compat_python):
    """Results in transformers 4.57: first without the plugin, then with it imported."""
    return run_child(
        compat_python,
        [
            task(saved, "compact"),
            task(saved, "per_layer"),
            task(saved, "coded"),
            task(saved, "portable", logits="logits.pt"),
            task(saved, "uniform", logits="uniform.pt"),
            task(saved, "record_dense", logits="logits.pt"),
            {"name": "registered", "kind": "registered"},
            task(saved, "plugin_record_dense", "record_dense", logits="logits.pt", plugin=True),
            task(saved, "plugin_uniform", "uniform", logits="uniform.pt", plugin=True),
            {"name": "plugin_prune", "path": tiny_dir["llama"], "plugin": True, "prune": True},
            task(saved, "plugin_compact", "compact", plugin=True),
            task(saved, "plugin_per_layer", "per_layer", plugin=True),
        ],
    )


@pytest.mark.parametrize("name", ["compact", "per_layer", "coded"])
def test_plain_transformers_stops_and_names_the_plugin(plain, name):
    result = plain[name]
    assert not result["ok"] and not result["plugin"]
    assert "pip install hf-compress" in result["error"] and "import hf_compress" in result["error"]


def test_without_the_note_the_stored_shapes_still_fail(plain):
    result = plain["stripped"]
    assert not result["ok"] and "ignore_mismatched_sizes" in result["error"]


@pytest.mark.parametrize("name", ["dense", "record_dense"])
def test_dense_saves_load_without_the_plugin(plain, name):
    assert plain[name] == {"ok": True, "plugin": False, "quantized": False, "maxdiff": 0.0}


def test_import_registers_the_hook_idempotently(plain):
    assert plain["registered"] == {
        "ok": True,
        "config": "HfCompressConfig",
        "quantizer": "HfCompressQuantizer",
    }


def test_after_import_a_fresh_interpreter_reloads_exactly(plain):
    assert plain["plugin_compact"] == {"ok": True, "plugin": True, "quantized": True, "maxdiff": 0.0}
    assert plain["plugin_per_layer"]["ok"]
    assert plain["plugin_coded"] == {"ok": True, "plugin": True, "quantized": True, "maxdiff": 0.0}


@pytest.mark.parametrize("name", ["compact", "per_layer", "coded"])
def test_transformers_457_stops_on_our_checkpoints(compat, name):
    result = compat[name]
    assert not result["ok"] and not result["plugin"]
    assert "import hf_compress" in result["error"] and f"transformers>={MIN_TRANSFORMERS}" in result["error"]


@pytest.mark.parametrize(
    "name", ["portable", "uniform", "record_dense", "plugin_record_dense", "plugin_uniform"]
)
def test_transformers_457_loads_dense_and_uniform_checkpoints(compat, name):
    result = compat[name]
    assert result["ok"], result
    assert result["plugin"] == name.startswith("plugin_") and result["maxdiff"] < 1e-5


def test_transformers_457_registers_the_version_guard(compat):
    assert compat["registered"] == {
        "ok": True, "config": "HfCompressConfig", "quantizer": "OlderTransformersQuantizer"
    }  # fmt: skip


@pytest.mark.parametrize("name", ["plugin_prune", "plugin_compact", "plugin_per_layer"])
def test_transformers_457_hook_names_the_version_it_needs(compat, name):
    result = compat[name]
    assert result["plugin"] and not result["ok"]
    assert f"needs transformers>={MIN_TRANSFORMERS}" in result["error"]
    # pruning at load reaches the quantizer, which names the installed version; a stored checkpoint
    # stops earlier, on the note in its config.json, which names the plugin and the version it needs
    assert "4.57" in result["error"] if name == "plugin_prune" else "import hf_compress" in result["error"]
