"""Hand a model to Optimum's ONNX export, which runs in the ``[optimum]`` environment (transformers 4.57).

The model is saved as a plain dense checkpoint that both transformers versions read the same way
(:func:`save_plain_checkpoint`), with reference logits recorded here
(:mod:`hf_compress.reference_logits`); :mod:`hf_compress.export_optimum` then runs in process (when
this interpreter is that environment) or in its interpreter, checks the logits, exports and
quantizes into the output folder, and returns its report.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)


def export_optimum_handoff(
    model, tokenizer, tmp: Path, config: Any, task: str, python: str
) -> dict[str, Any]:
    """Run the Optimum export of ``model`` into ``tmp``; ``python`` is ``"in-process"`` or an interpreter."""
    from .export_optimum import CAUSAL_TASK, export_in_this_env
    from .reference_logits import REFERENCE_FILE, write_reference

    work = Path(tempfile.mkdtemp(prefix=".hf-compress-export-", dir=tmp.parent))
    try:
        ckpt = work / "checkpoint"
        save_plain_checkpoint(model, tokenizer, ckpt)
        if task == CAUSAL_TASK:
            write_reference(model, tokenizer, ckpt)
        kwargs = dict(
            task=task,
            quantize=config.quantize,
            arch=config.arch,
            per_channel=config.per_channel,
            fp32_layers=tuple(config.fp32_layers),
            opset=config.opset,
            atol=config.parity_atol,
            generate_tokens=config.generate_tokens,
        )
        if python == "in-process":
            report = export_in_this_env(ckpt, tmp, **kwargs)
        else:
            report = _run_optimum_subprocess(python, ckpt, tmp, work / "optimum_report.json", kwargs)
        (tmp / REFERENCE_FILE).unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["optimum_versions"] = report.pop("versions")
    return report


def _run_optimum_subprocess(
    python: str, ckpt: Path, out: Path, report_file: Path, kw: dict
) -> dict[str, Any]:
    cmd = [
        python,
        "-m",
        "hf_compress.export_optimum",
        str(ckpt),
        str(out),
        "--task",
        kw["task"],
        "--arch",
        kw["arch"],
        "--atol",
        str(kw["atol"]),
        "--generate-tokens",
        str(kw["generate_tokens"]),
        "--report",
        str(report_file),
        "--per-channel" if kw["per_channel"] else "--no-per-channel",
    ]
    cmd += ["--quantize", kw["quantize"]] if kw["quantize"] else []
    cmd += ["--opset", str(kw["opset"])] if kw["opset"] else []
    for pattern in kw["fp32_layers"]:
        cmd += ["--fp32-layer", pattern]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_package_root()), env.get("PYTHONPATH")) if p)
    logger.info("running Optimum in %s: %s", python, " ".join(cmd[1:]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        _raise_from_subprocess(python, proc)
    return json.loads(report_file.read_text(encoding="utf-8"))


def _raise_from_subprocess(python: str, proc: subprocess.CompletedProcess) -> None:
    from .reference_logits import ReferenceMismatchError

    tail = proc.stderr.strip().splitlines()[-25:]
    last = tail[-1] if tail else ""
    if "ReferenceMismatchError" in last:
        raise ReferenceMismatchError(last.split("ReferenceMismatchError:", 1)[-1].strip())
    raise RuntimeError(f"Optimum export failed in {python} (exit {proc.returncode}):\n" + "\n".join(tail))


def save_plain_checkpoint(model: nn.Module, tokenizer: Any, folder: Path) -> Path:
    """A dense checkpoint plain transformers (4.57 and 5.x) loads: no hf_compress hook, portable config."""
    from .portable import make_config_portable, save_pretrained_portable, save_tokenizer_portable

    if getattr(model, "hf_quantizer", None) is None:
        return save_pretrained_portable(model, tokenizer, folder)
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key not in seen:  # tied weights: keep the first name (the input embeddings)
            seen.add(key)
            tensors[name] = tensor.detach().contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in ("quantization_config", "transformers_weights"):
        config.pop(key, None)
    (folder / "config.json").write_text(
        json.dumps(make_config_portable(config), indent=2, sort_keys=True) + "\n"
    )
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(folder))
    save_tokenizer_portable(tokenizer, folder)
    return folder


def _package_root() -> Path:
    return Path(__file__).resolve().parents[1]
