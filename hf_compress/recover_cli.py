"""``hf-compress recover``: LoRA recovery of a pruned model (thin; the work is in :mod:`hf_compress.recover`).

Merged (default): a recipe with one ``recover`` stage, so the output is the usual Hub-ready folder
(weights with every pruned zero kept, report, card). ``--no-merge``: an adapter release (PEFT
adapter + tokenizer + ``recovery_report.json``) to apply on top of the pruned model.

    hf-compress recover --model pruned/ --dataset valid.txt --output-dir out/ --loss kd --teacher smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_SKIP = {"training_args"}
_OWN = ("model", "output_dir", "dataset", "teacher", "checkpoint_dir", "overwrite", "dtype", "eval_dataset",
        "eval_seqlen", "eval_windows", "quiet")  # fmt: skip


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``recover`` flags (on ``parser`` when the main CLI passes its subparser)."""
    from .cli import add_dataclass_flags
    from .recover import RecoveryConfig

    p = parser or argparse.ArgumentParser(prog="hf-compress recover", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="flat YAML of the flags below (flags override it)")
    p.add_argument("--model", help="the pruned model: fetch name, local folder or Hub id")
    p.add_argument("--dataset", help="training text: file, folder or Hub dataset name")
    p.add_argument("--output-dir")
    p.add_argument("--teacher", help="dense teacher for --loss kd: fetch name, folder or Hub id")
    p.add_argument(
        "--checkpoint-dir", help="where checkpoints go (with --save-steps) and --resume reads them"
    )
    p.add_argument("--overwrite", action="store_true", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--eval-dataset", help="also evaluate perplexity before and after on this text")
    p.add_argument("--eval-seqlen", type=int)
    p.add_argument("--eval-windows", type=int)
    if parser is None:
        p.add_argument("--quiet", action="store_true", default=None)
    add_dataclass_flags(p, RecoveryConfig, skip=_SKIP)
    return p


def recover_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-compress recover``; returns the exit status (2 on bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        print(run_recover_command(args))
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"hf-compress recover: error: {err}", file=sys.stderr)
        return 2
    return 0


def recover_handler(args: argparse.Namespace) -> int:
    """Handler for the main CLI's ``recover`` subparser (built with :func:`build_parser`)."""
    print(run_recover_command(args))
    return 0


def run_recover_command(args: argparse.Namespace) -> Path:
    """Validate everything, then write the merged release or the adapter release; returns its path."""
    from .cli import merged_options
    from .recover import RecoveryConfig

    opts = merged_options(args)
    missing = [k for k in ("model", "dataset", "output_dir") if not opts.get(k)]
    if missing:
        raise ValueError(f"missing --{missing[0].replace('_', '-')} (or the key in --config)")
    names = {f.name for f in dataclasses.fields(RecoveryConfig)}
    params = {k: v for k, v in opts.items() if k in names and v is not None}
    params |= {k: opts[k] for k in ("dataset", "teacher", "checkpoint_dir") if opts.get(k)}
    progress = not opts.get("quiet")
    if params.get("merge", True):
        return _merged_release(opts, params, progress)
    return _adapter_release(opts, params, progress)


def _merged_release(opts: dict[str, Any], params: dict[str, Any], progress: bool) -> Path:
    from .recipes import STAGES, Recipe, run_recipe

    if "recover" not in STAGES:
        raise RuntimeError("the 'recover' recipe stage is not registered (hf_compress.recipes.STAGES)")
    evaluation = None
    if opts.get("eval_dataset"):
        evaluation = {"dataset": opts["eval_dataset"], "seqlen": opts.get("eval_seqlen") or 2048,
                      "max_windows": opts.get("eval_windows")}  # fmt: skip
    if params.get("teacher") == "base":
        raise ValueError("--teacher base means the recipe's own model; give the dense model's name or folder")
    recipe = Recipe(name=Path(opts["output_dir"]).name, model=opts["model"], output_dir=opts["output_dir"],
                    stages=[{"recover": params}], evaluation=evaluation, dtype=opts.get("dtype") or "float32",
                    overwrite=bool(opts.get("overwrite")))  # fmt: skip
    return run_recipe(recipe, progress=progress)


def _adapter_release(opts: dict[str, Any], params: dict[str, Any], progress: bool) -> Path:
    from .engine import barrier, is_main_process
    from .models.loading import load_causal_lm
    from .portable import atomic_dir, check_output_path, save_tokenizer_portable
    from .recover import recover_with_lora
    from .stages_recover import _config, validate_recover

    params = dict(params)
    check_output_path(opts["output_dir"], bool(opts.get("overwrite")))
    try:
        validate_recover(params | {"merge": True})  # the same checks as a recipe stage, before loading
    except ValueError as err:
        raise ValueError(str(err).replace("merge=false", "--no-merge")) from None
    dataset, teacher_name = params.pop("dataset"), params.pop("teacher", None)
    checkpoint_dir = params.pop("checkpoint_dir", None)
    config = _config(params)
    dtype = opts.get("dtype") or "float32"
    model, tokenizer, base_id = load_causal_lm(opts["model"], dtype=dtype)
    teacher = teacher_tokenizer = None
    if config.loss == "kd":
        teacher, teacher_tokenizer, _ = load_causal_lm(teacher_name, dtype=dtype)
    peft_model = recover_with_lora(model, dataset, teacher, tokenizer=tokenizer, config=config, output_dir=checkpoint_dir,
                                   teacher_tokenizer=teacher_tokenizer, progress=progress)  # fmt: skip
    report = {"base_model": base_id, "model": opts["model"], "dataset": str(dataset), "teacher": teacher_name,
              "recovery": peft_model.hf_compress_recovery.to_dict()}  # fmt: skip
    if is_main_process():  # one complete release, written by the main process only
        with atomic_dir(opts["output_dir"], overwrite=bool(opts.get("overwrite"))) as tmp:
            peft_model.save_pretrained(str(tmp))
            save_tokenizer_portable(tokenizer, tmp)
            (tmp / "recovery_report.json").write_text(
                json.dumps(report, indent=2, default=str), encoding="utf-8"
            )
    barrier()
    return Path(opts["output_dir"])


if __name__ == "__main__":
    sys.exit(recover_main())
