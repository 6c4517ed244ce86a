"""ONNX export (+ ONNX Runtime dynamic int8) of a compressed model, with parity checks and a card.

Two exporters, one result layout and one set of checks:

* ``backend="optimum"`` — Optimum (``main_export`` + ``ORTQuantizer``). Every optimum-onnx release
  pins ``transformers<4.58``, so unless this interpreter already is such an environment, the model
  is saved as a portable checkpoint (:mod:`hf_compress.portable`) with reference logits recorded
  here (:mod:`hf_compress.reference_logits`) and :mod:`hf_compress.export_optimum` runs in the
  ``[optimum]`` interpreter (``HF_COMPRESS_OPTIMUM_PYTHON``, else ``.venv-optimum/bin/python``
  beside the package; ``scripts/setup_optimum_venv.sh`` makes it). It first proves the checkpoint
  loads there as the same model, then exports. Files: ``model.onnx``, ``model_quantized.onnx``.
* ``backend="transformers"`` — ``transformers.exporters`` (transformers >= 5.20), in this process
  (:mod:`hf_compress.export_transformers`). Handles shapes Optimum cannot (per-layer KV heads, an
  explicit ``head_dim``). Files: ``model.onnx`` (+ ``.data``) and ``int8/model.onnx``.
* ``backend="auto"`` — Optimum when it can run and handle the shapes, else transformers' exporter.

Then, in this process, every graph runs through ONNX Runtime (:mod:`hf_compress.onnx_session`)
against the PyTorch model: max |logit diff| (fp32 must be within ``parity_atol``), argmax
agreement and greedy generations. Optionally perplexity (same protocol as PyTorch) and latency.
The folder gets ``export_report.json`` and a model card, and is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .export_optimum import ARCHS, CAUSAL_TASK, CLASSIFICATION_TASK, OptimumUnavailableError, optimum_problem
from .portable import atomic_dir, check_output_path

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "optimum", "transformers")
TASKS = ("auto", CAUSAL_TASK, CLASSIFICATION_TASK)
QUANTIZE = (None, "int8")
REPORT_FILE = "export_report.json"
OPTIMUM_PYTHON_ENV = "HF_COMPRESS_OPTIMUM_PYTHON"
# model types whose head width Optimum's ORTModelForCausalLM reads from `config.head_dim`
_OPTIMUM_READS_HEAD_DIM = {"gemma", "gemma3_text", "gpt_oss", "nemotron"}


class UnsupportedExportError(ValueError):
    """The chosen exporter cannot handle this model; the message names the path to use instead."""


class ExportParityError(RuntimeError):
    """The fp32 ONNX graph does not reproduce the PyTorch logits within ``parity_atol``."""


@dataclass
class ExportConfig:
    """How to export.

    Attributes:
        backend: ``"auto"``, ``"optimum"`` or ``"transformers"`` (see the module docstring).
        quantize: ``"int8"`` (ONNX Runtime dynamic: int8 weights, activations quantized at run time)
            or ``None`` (fp32 only).
        task: ``"auto"`` (from the model class), ``"text-generation-with-past"`` or ``"text-classification"``.
        arch: CPU target of Optimum's ``AutoQuantizationConfig`` (``"auto"`` reads this CPU's flags).
        per_channel: per-output-channel weight scales (Optimum's default) instead of per-tensor.
        fp32_layers: regexes (``re.search``) over the MatMul nodes' names / module paths kept in fp32 in
            the int8 graph, e.g. ``["down_proj"]``: the FFN output projections read the activations with
            the largest outliers (Dettmers et al. 2022, LLM.int8()), which one dynamic per-tensor scale
            handles worst (SmolLM2-135M: perplexity 41.4 -> 29.0 vs 27.6 fp32, graph 137 -> 217 MB).
        keep_fp32: keep the fp32 graph next to the int8 one.
        opset: ONNX opset (``None``: the exporter's default).
        parity_atol: the largest |logit diff| fp32 ONNX vs PyTorch accepted (int8 is reported only).
        generate_tokens: greedy tokens generated through ONNX Runtime per parity prompt (0: none).
        optimum_python: interpreter of the ``[optimum]`` environment (default: see module docstring).
        overwrite: replace an existing output folder (only once the new one is complete).
    """

    backend: str = "auto"
    quantize: str | None = "int8"
    task: str = "auto"
    arch: str = "auto"
    per_channel: bool = True
    fp32_layers: list[str] = field(default_factory=list)
    keep_fp32: bool = True
    opset: int | None = None
    parity_atol: float = 1e-3
    generate_tokens: int = 8
    optimum_python: str | None = None
    overwrite: bool = False

    def __post_init__(self):
        _choice("backend", self.backend, BACKENDS)
        _choice("quantize", self.quantize, QUANTIZE)
        _choice("task", self.task, TASKS)
        _choice("arch", self.arch, ARCHS)
        self.fp32_layers = _regexes("fp32_layers", self.fp32_layers)
        if self.quantize is None and not self.keep_fp32:
            raise ValueError("keep_fp32=False needs quantize='int8' (otherwise no graph would be kept)")
        if self.opset is not None and (not isinstance(self.opset, int) or self.opset < 14):
            raise ValueError(f"opset={self.opset!r} must be an integer >= 14 or None")
        if not isinstance(self.parity_atol, (int, float)) or self.parity_atol <= 0:
            raise ValueError(f"parity_atol={self.parity_atol!r} must be a number > 0")
        if not isinstance(self.generate_tokens, int) or self.generate_tokens < 0:
            raise ValueError(f"generate_tokens={self.generate_tokens!r} must be an integer >= 0")
        if self.optimum_python is not None and not Path(self.optimum_python).is_file():
            raise FileNotFoundError(f"optimum_python={self.optimum_python!r} is not a file")


def _regexes(name: str, values: Any) -> list[str]:
    values = [values] if isinstance(values, str) else list(values or [])
    for value in values:
        try:
            re.compile(value)
        except (re.error, TypeError) as err:
            raise ValueError(f"{name}: {value!r} is not a regular expression ({err})") from None
    return values


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {allowed}")


@dataclass
class ExportResult:
    """The written folder and its report (also in ``path / export_report.json``)."""

    path: Path
    report: dict[str, Any] = field(default_factory=dict)

    def graph(self, variant: str = "int8") -> Path:
        """Path of the ``"fp32"`` or ``"int8"`` graph."""
        return self.path / self.report["files"][variant]["path"]


def export_onnx(
    model: nn.Module | str | Path,
    output_dir: str | Path,
    config: ExportConfig | None = None,
    *,
    tokenizer: Any = None,
    evaluation: dict[str, Any] | None = None,
    latency: bool | dict[str, Any] = False,
    card: dict[str, Any] | None = None,
    progress: bool = True,
    **overrides: Any,
) -> ExportResult:
    """Export ``model`` (a model or a checkpoint folder) to ONNX in ``output_dir``.

    Args:
        config: an :class:`ExportConfig`; ``overrides`` (e.g. ``quantize="int8"``) replace its fields.
        tokenizer: required with an in-memory model (saved into the folder, used for the checks).
        evaluation: perplexity of the released graph with the PyTorch protocol: ``{"dataset",
            "seqlen", "max_windows", "add_bos"}`` (``"variants": ["int8", "fp32"]`` to add fp32).
        latency: ``True`` or :func:`hf_compress.onnx_eval.onnx_latency` kwargs (+ ``"variants"``).
        card: model-card settings (``base_model``, ``repo_id``, ``license``, ``datasets``, ``tags``,
            ``source_results``, ``limitations``...); ``False`` writes no card.

    Raises:
        ValueError / FileExistsError: bad settings or an existing ``output_dir``, before any work.
        UnsupportedExportError: shapes the chosen exporter cannot handle (names the other path).
        ReferenceMismatchError: the checkpoint loads differently in Optimum's environment.
        ExportParityError: fp32 ONNX logits differ from PyTorch by more than ``parity_atol``.
    """
    config = ExportConfig(**(asdict(config or ExportConfig()) | overrides))
    out = check_output_path(output_dir, config.overwrite)
    started = time.perf_counter()
    model, tokenizer, source = _load(model, tokenizer)
    task = detect_task(model) if config.task == "auto" else config.task
    backend, python = choose_backend(config, model)
    logger.info("exporting %s (%s) with %s to %s", source["class"], task, backend, out)
    with atomic_dir(out, overwrite=config.overwrite) as tmp:
        report = _export(model, tokenizer, tmp, config, task, backend, python)
        report["source"] = source
        _check_parity(model, tokenizer, tmp, report, task, config)
        if task == CAUSAL_TASK:
            _measure(tmp, tokenizer, report, evaluation, latency, progress)
        report["seconds"] = time.perf_counter() - started
        _finish_folder(tmp, tokenizer, report, source, card)
    return ExportResult(out, report)


# ----------------------------------------------------------------------------- model, task, backend


def _load(model: nn.Module | str | Path, tokenizer: Any) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(model in eval mode, tokenizer, source description)``."""
    from .models.loading import resolve_model

    path = None
    if isinstance(model, (str, Path)):
        path, base_id = resolve_model(str(model))
        model = _load_folder(path)
        tokenizer = tokenizer or _load_tokenizer(path)
    else:
        base_id = str(getattr(model.config, "_name_or_path", "") or "")
    if tokenizer is None:
        raise ValueError(
            "tokenizer=None: pass the model's tokenizer (it is saved with the export and used for checks)"
        )
    params = list({id(p): p for p in model.parameters()}.values())
    source = {
        "path": str(path) if path else None,
        "base_model": base_id,
        "class": type(model).__name__,
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in params),
        "fp32_bytes": sum(p.numel() for p in params) * 4,
    }
    return model.eval(), tokenizer, source


def _load_folder(path: str) -> nn.Module:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    architectures = AutoConfig.from_pretrained(path).architectures or []
    classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    loader = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    return loader.from_pretrained(path, dtype=torch.float32)


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def detect_task(model: nn.Module) -> str:
    """``"text-generation-with-past"`` for causal LMs, ``"text-classification"`` for sequence classifiers."""
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return CAUSAL_TASK
    if name.endswith("ForSequenceClassification"):
        return CLASSIFICATION_TASK
    raise UnsupportedExportError(
        f"{name} is neither a causal LM nor a sequence classifier; the ONNX export supports "
        f"{CAUSAL_TASK!r} (AutoModelForCausalLM) and {CLASSIFICATION_TASK!r} (AutoModelForSequenceClassification)"
    )


def optimum_shape_problem(model: nn.Module) -> str | None:
    """Why Optimum cannot export ``model`` faithfully (shapes), or ``None``."""
    per_layer = _per_layer_shapes(model)
    if per_layer:
        return (
            f"{per_layer}; Optimum builds every layer from the one config and sizes each layer's KV cache from it "
            "(per-layer KV heads / widths are not supported)"
        )
    config = model.config
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    width = getattr(config, "head_dim", None)
    if (
        width
        and heads
        and hidden
        and width != hidden // heads
        and config.model_type not in _OPTIMUM_READS_HEAD_DIM
    ):
        return (
            f"head_dim={width} differs from hidden_size // num_attention_heads = {hidden} // {heads} = "
            f"{hidden // heads}, the KV-cache head size Optimum's ORTModelForCausalLM uses for "
            f"model_type={config.model_type!r} (generation would fail)"
        )
    return None


def _per_layer_shapes(model: nn.Module) -> str | None:
    """A description of blocks whose projection widths differ from the config's, or ``None``."""
    from .models.table import UnsupportedArchitectureError, arch_spec, decoder_layers, head_dim, num_heads
    from .models.weights import weight_out_in

    try:
        spec = arch_spec(model)
        heads, kv_heads = num_heads(model)
        width = head_dim(model)
    except (UnsupportedArchitectureError, TypeError, AttributeError):
        return None
    ffn = getattr(model.config, spec.ffn, None)
    expected = {spec.q: heads * width, spec.k: kv_heads * width, spec.v: kv_heads * width, spec.up: ffn}
    odd = []
    for index, layer in enumerate(decoder_layers(model)):
        for path, size in expected.items():
            if path and size and weight_out_in(layer.get_submodule(path)).shape[0] != size:
                odd.append(f"{index}:{path.rpartition('.')[2]}")
    if not odd:
        return None
    return f"blocks have projection widths other than the config's ({', '.join(odd[:6])}{' ...' if len(odd) > 6 else ''})"


def optimum_interpreter(config: ExportConfig) -> str | None:
    """``"in-process"`` when Optimum runs here, else the ``[optimum]`` interpreter's path, else ``None``."""
    if optimum_problem() is None:
        return "in-process"
    candidates = [
        config.optimum_python,
        os.environ.get(OPTIMUM_PYTHON_ENV),
        str(_package_root() / ".venv-optimum" / "bin" / "python"),
    ]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _package_root() -> Path:
    return Path(__file__).resolve().parents[1]


def choose_backend(config: ExportConfig, model: nn.Module) -> tuple[str, str | None]:
    """``(backend, optimum interpreter or None)`` for ``config.backend`` and this model; clear errors."""
    from .export_transformers import transformers_exporter_problem

    shapes, tx_problem = optimum_shape_problem(model), transformers_exporter_problem()
    if config.backend == "transformers":
        if tx_problem:
            raise UnsupportedExportError(f"transformers' exporter cannot run here: {tx_problem}")
        return "transformers", None
    python = optimum_interpreter(config)
    if config.backend == "optimum":
        if shapes:
            raise UnsupportedExportError(
                f"Optimum cannot export this model: {shapes}. Instead, {_use_tx(tx_problem)}."
            )
        if python is None:
            raise OptimumUnavailableError(_no_optimum_message(tx_problem))
        return "optimum", python
    if python is not None and not shapes:
        return "optimum", python
    if tx_problem is None:
        if shapes:
            logger.warning("Optimum cannot export this model (%s); using transformers.exporters", shapes)
        return "transformers", None
    if shapes:
        raise UnsupportedExportError(
            f"Optimum cannot export this model: {shapes}. Instead, {_use_tx(tx_problem)}."
        )
    raise OptimumUnavailableError(
        f"{_no_optimum_message(tx_problem)}; transformers' exporter cannot run here either: {tx_problem}"
    )


def _use_tx(tx_problem: str | None) -> str:
    where = "" if tx_problem is None else f" in an environment with transformers>=5.20 (here: {tx_problem})"
    return (
        "use backend='transformers' (`hf-compress export --backend transformers`), which traces the modules "
        f"themselves{where}"
    )


def _no_optimum_message(tx_problem: str | None) -> str:
    return (
        f"Optimum's ONNX export is not available: here {optimum_problem()}. Every optimum-onnx release pins "
        "transformers<4.58, so it runs in its own environment: create it with `bash scripts/setup_optimum_venv.sh` "
        f"(or a venv with `pip install optimum-onnx[onnxruntime] 'transformers<4.58'` and hf-compress) and set "
        f"{OPTIMUM_PYTHON_ENV} to its python"
        + ("" if tx_problem else "; or use backend='transformers' (transformers.exporters, available here)")
    )


# ----------------------------------------------------------------------------- the exporters


def _export(model, tokenizer, tmp: Path, config: ExportConfig, task: str, backend: str, python: str | None):
    if backend == "transformers":
        from .export_transformers import export_with_transformers

        report = export_with_transformers(
            model,
            tmp,
            causal=task == CAUSAL_TASK,
            quantize=config.quantize,
            per_channel=config.per_channel,
            fp32_layers=tuple(config.fp32_layers),
            opset=config.opset,
        )
        _clean_config(tmp)
        if (tmp / "int8").is_dir():
            _clean_config(tmp / "int8")
    else:
        from .export_handoff import export_optimum_handoff

        report = export_optimum_handoff(model, tokenizer, tmp, config, task, python)
    report.update(backend=backend, task=task, format="onnx", config=asdict(config), versions=_versions())
    report["files"] = {k: {"path": v} for k, v in report["files"].items()}
    return report


def _clean_config(folder: Path) -> None:
    """Drop the hf_compress hook record from an export's config.json (ONNX graphs are plain)."""
    from .portable import make_config_portable

    file = folder / "config.json"
    if file.is_file():
        config = json.loads(file.read_text(encoding="utf-8"))
        for key in ("quantization_config", "transformers_weights"):
            config.pop(key, None)
        file.write_text(json.dumps(make_config_portable(config), indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- checks, figures, folder


def _check_parity(
    model, tokenizer, folder: Path, report: dict[str, Any], task: str, config: ExportConfig
) -> None:
    from .onnx_eval import causal_parity, classifier_parity
    from .onnx_session import OnnxCausalLM, open_session

    report["parity"] = {}
    for variant, entry in report["files"].items():
        path = folder / entry["path"]
        if task == CAUSAL_TASK:
            result = causal_parity(
                model, tokenizer, OnnxCausalLM(path), generate_tokens=config.generate_tokens
            )
        else:
            result = classifier_parity(model, tokenizer, open_session(path))
        report["parity"][variant] = result
        logger.info("parity %s: max |logit diff| %.3g", variant, result["max_abs_diff"])
    fp32 = report["parity"].get("fp32")
    if fp32 and fp32["max_abs_diff"] > config.parity_atol:
        raise ExportParityError(
            f"the fp32 ONNX graph's logits differ from PyTorch by up to {fp32['max_abs_diff']:.3g} "
            f"(parity_atol={config.parity_atol}); the export is not the same model"
        )
    if not config.keep_fp32 and "fp32" in report["files"]:
        for file in _graph_files(folder, report["files"].pop("fp32")["path"]):
            file.unlink()


def _measure(folder: Path, tokenizer, report, evaluation, latency, progress: bool) -> None:
    from .onnx_eval import onnx_latency, onnx_perplexity
    from .onnx_session import OnnxCausalLM

    primary = "int8" if "int8" in report["files"] else "fp32"
    if evaluation:
        params = dict(evaluation)
        variants, dataset = params.pop("variants", [primary]), params.pop("dataset")
        report["evaluation"] = {
            v: onnx_perplexity(
                OnnxCausalLM(folder / report["files"][v]["path"]),
                tokenizer,
                dataset,
                progress=progress,
                **params,
            ).to_dict()
            for v in variants
        }
    if latency:
        params = dict(latency) if isinstance(latency, dict) else {}
        variants = params.pop("variants", [primary])
        report["latency"] = {
            v: onnx_latency(OnnxCausalLM(folder / report["files"][v]["path"]), **params) for v in variants
        }


def _graph_files(folder: Path, rel: str) -> list[Path]:
    graph = folder / rel
    extra = [graph.with_name(graph.name + suffix) for suffix in ("_data", ".data")]
    return [graph] + [f for f in extra if f.is_file()]


def _finish_folder(tmp: Path, tokenizer, report: dict[str, Any], source: dict[str, Any], card) -> None:
    from .portable import save_tokenizer_portable

    for entry in report["files"].values():
        entry["bytes"] = sum(f.stat().st_size for f in _graph_files(tmp, entry["path"]))
    if not (tmp / "tokenizer.json").is_file():
        save_tokenizer_portable(tokenizer, tmp)
    source_dir = Path(source["path"]) if source.get("path") else None
    if source_dir and (source_dir / "recipe.yaml").is_file():
        shutil.copy2(source_dir / "recipe.yaml", tmp / "recipe.yaml")
    if source_dir and (source_dir / "compression_report.json").is_file():
        report["source_report"] = json.loads(
            (source_dir / "compression_report.json").read_text(encoding="utf-8")
        )
    if card is not False:
        from .hub import create_model_card
        from .release import export_card_context

        ctx = export_card_context(report, dict(card or {}))
        report["card_settings"] = dict(card or {})
        report["card"] = ctx.to_dict()
        (tmp / "README.md").write_text(str(create_model_card(ctx)), encoding="utf-8")
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for dist in (
        "hf-compress",
        "torch",
        "transformers",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "optimum",
        "optimum-onnx",
    ):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out
