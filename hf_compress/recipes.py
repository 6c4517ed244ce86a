"""Recipes: a YAML file of ordered stages run by ``hf-compress run RECIPE.yaml``.

A recipe names a model (a ``hf-compress fetch`` name, a local folder or a Hub id), the stages to
apply in order, how to evaluate before and after, and where to write the Hub-ready folder. Every
stage's settings are validated before the model is loaded; the output folder is written atomically.
Strings may use ``{data}`` for the data folder (``HF_COMPRESS_DATA``, else ``../shared/data``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .portable import check_output_path
from .report import library_versions, peak_rss_mib

logger = logging.getLogger(__name__)


@dataclass
class Recipe:
    """A validated recipe. ``stages`` is a list of one-key dicts: ``[{"prune": {...}}, ...]``."""

    name: str
    model: str
    output_dir: str
    stages: list[dict[str, dict[str, Any]]]
    evaluation: dict[str, Any] | None = None
    dtype: str = "float32"
    overwrite: bool = False
    card: dict[str, Any] = field(default_factory=dict)
    source_text: str = ""

    def __post_init__(self):
        for name in ("model", "output_dir", "stages", "evaluation"):
            setattr(self, name, expand_placeholders(getattr(self, name)))
        if not self.stages:
            raise ValueError(
                f"recipe {self.name!r}: 'stages' is empty; give at least one of {sorted(STAGES)}"
            )
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, dict) or len(stage) != 1:
                raise ValueError(
                    f"recipe {self.name!r}: stages[{i}] must be a one-key mapping like {{prune: {{...}}}}"
                )
            kind, params = next(iter(stage.items()))
            if kind not in STAGES:
                raise ValueError(
                    f"recipe {self.name!r}: stages[{i}] {kind!r} is unknown; allowed: {sorted(STAGES)}"
                )
            if params is not None and not isinstance(params, dict):
                raise ValueError(
                    f"recipe {self.name!r}: stages[{i}] {kind!r} must map to a mapping of settings "
                    f"(like {{{kind}: {{key: value}}}}), not {params!r}"
                )
            STAGES[kind].validate(params or {})
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r} is not one of 'float32', 'bfloat16', 'float16'")
        if self.evaluation is not None:
            _check_dataset(self.evaluation, "evaluation")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> Recipe:
        """Load a recipe file; ``overrides`` (e.g. ``output_dir``) replace top-level keys."""
        text = Path(path).read_text(encoding="utf-8")
        raw = yaml.safe_load(text) or {}
        raw.update({k: v for k, v in overrides.items() if v is not None})
        allowed = {"name", "model", "output_dir", "stages", "evaluation", "dtype", "overwrite", "card"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"{path}: unknown recipe key(s) {unknown}; allowed: {sorted(allowed)}")
        missing = [k for k in ("model", "output_dir", "stages") if k not in raw]
        if missing:
            raise ValueError(f"{path}: missing required key(s) {missing}")
        raw.setdefault("name", Path(path).stem)
        return cls(**raw, source_text=text)


@dataclass
class RunState:
    """What stages share: the model, its tokenizer, and what the run has done and measured."""

    model: Any
    tokenizer: Any
    recipe: Recipe
    base_model_id: str
    stages: list[dict[str, Any]] = field(default_factory=list)
    evaluations: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    """A recipe stage: ``validate(params)`` runs before loading; ``run(state, params)`` does the work."""

    validate: Callable[[dict[str, Any]], None]
    run: Callable[[RunState, dict[str, Any]], None]


def data_dir() -> Path:
    """``HF_COMPRESS_DATA`` or the first ``../shared/data`` found from here or from the package."""
    if os.environ.get("HF_COMPRESS_DATA"):
        return Path(os.environ["HF_COMPRESS_DATA"])
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"


def expand_placeholders(value: Any) -> Any:
    """Replace ``{data}`` in every string of a nested structure."""
    if isinstance(value, str):
        return value.replace("{data}", str(data_dir()))
    if isinstance(value, list):
        return [expand_placeholders(v) for v in value]
    if isinstance(value, dict):
        return {k: expand_placeholders(v) for k, v in value.items()}
    return value


def _check_dataset(params: dict[str, Any], where: str) -> None:
    dataset = params.get("dataset")
    if dataset is None:
        raise ValueError(f"{where}: 'dataset' is required (a local file/folder or a Hub dataset name)")
    looks_local = isinstance(dataset, str) and (os.sep in dataset or Path(dataset).suffix)
    if looks_local and not Path(dataset).exists():
        hint = "" if os.environ.get("HF_COMPRESS_DATA") else " (recipes read '{data}' from HF_COMPRESS_DATA, else ../shared/data)"
        raise FileNotFoundError(f"{where}: dataset file {dataset!r} does not exist{hint}")


def run_recipe(recipe: Recipe, *, progress: bool = True) -> Path:
    """Run every stage, evaluate before/after, write the Hub-ready folder; returns its path."""
    from .models.loading import load_causal_lm

    started = time.perf_counter()
    check_output_path(recipe.output_dir, recipe.overwrite)
    model, tokenizer, base_id = load_causal_lm(recipe.model, dtype=recipe.dtype)
    state = RunState(model, tokenizer, recipe, base_id)
    if recipe.evaluation:
        state.evaluations["base"] = _evaluate(state, progress)
    for stage in recipe.stages:
        kind, params = next(iter(stage.items()))
        tic = time.perf_counter()
        logger.info("stage %s", kind)
        STAGES[kind].run(state, copy.deepcopy(params or {}) | {"progress": progress})
        state.stages[-1]["seconds"] = time.perf_counter() - tic
    if recipe.evaluation:
        state.evaluations["final"] = _evaluate(state, progress)
    report = _run_report(state, time.perf_counter() - started)
    from .engine import barrier, is_main_process
    from .release import write_release

    path = Path(recipe.output_dir)
    if is_main_process():  # one complete checkpoint, written by the main process only
        path = write_release(state, report)
    barrier()
    return path


def _evaluate(state: RunState, progress: bool) -> dict[str, Any]:
    from .evaluate import perplexity

    params = dict(state.recipe.evaluation)
    result = perplexity(state.model, state.tokenizer, params.pop("dataset"), progress=progress, **params)
    logger.info("%s -> ppl %.3f", result.protocol.describe(), result.ppl)
    return result.to_dict()


def _run_report(state: RunState, seconds: float) -> dict[str, Any]:
    from .sparsity import sparsity_report

    return {
        "recipe": state.recipe.name,
        "model": state.recipe.model,
        "base_model": state.base_model_id,
        "stages": state.stages,
        "evaluation": state.evaluations,
        "sparsity": sparsity_report(state.model).to_dict(),
        "seconds": seconds,
        "peak_rss_mib": peak_rss_mib(),
        "versions": library_versions(),
    }


def _validate_prune(params: dict[str, Any]) -> None:
    from .config import PrunerConfig

    settings = {k: v for k, v in params.items() if k not in ("dataset", "text_field", "progress")}
    allowed = {f.name for f in dataclasses.fields(PrunerConfig)} - {"tokenizer"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"prune: unknown key(s) {unknown}; allowed: {sorted(allowed | {'text_field'})}")
    config = PrunerConfig(**settings)
    if config.needs_calibration:
        _check_dataset(params, "prune")


def _run_prune(state: RunState, params: dict[str, Any]) -> None:
    from .api import prune
    from .config import PrunerConfig

    progress = params.pop("progress", True)
    dataset = params.pop("dataset", None)
    config = PrunerConfig(**params)
    prune(state.model, config, dataset=dataset, tokenizer=state.tokenizer, progress=progress)
    report = state.model.hf_compress_report
    state.stages.append({"stage": "prune", "config": config.to_dict(), "report": report.to_dict()})
    state.tags += ["pruned", config.method, "sparsity"] + (
        [config.pattern] if config.nm else ["unstructured"]
    )
    what = f"{config.pattern} semi-structured" if config.nm else f"{config.sparsity:.0%} unstructured"
    calib = report.calibration or {}
    on = (
        f" calibrated on {calib.get('n_windows')} x {calib.get('seqlen')} tokens of {calib.get('source')}"
        if calib
        else ""
    )
    state.steps.append(f"{config.method} pruning to {what} sparsity of every decoder projection{on}.")


STAGES: dict[str, Stage] = {
    "prune": Stage(_validate_prune, _run_prune),
}


def _register_stages() -> None:
    """Stages defined next to their features (they import ``Stage``/``RunState`` from here)."""
    from .stages_distill import DISTILL_STAGE
    from .stages_export import run_export, run_quantize, validate_export, validate_quantize
    from .stages_recover import RECOVER_STAGE
    from .stages_structured import run_prune_structured, validate_prune_structured

    STAGES["prune_structured"] = Stage(validate_prune_structured, run_prune_structured)
    STAGES["recover"] = RECOVER_STAGE
    STAGES["distill"] = DISTILL_STAGE
    STAGES["quantize"] = Stage(validate_quantize, run_quantize)
    STAGES["export"] = Stage(validate_export, run_export)


_register_stages()
