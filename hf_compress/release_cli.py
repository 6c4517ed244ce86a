"""Command-line entry points ``hf-compress export | card | push`` (thin: parse, call, print).

Each ``*_main(argv)`` parses its own arguments and returns an exit code: 0 on success, 2 with a
one-line ``hf-compress <cmd>: error: ...`` on a user error (bad settings, missing token, shapes an
exporter cannot handle, parity failure).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def export_main(argv: Sequence[str] | None = None) -> int:
    """``hf-compress export MODEL OUTPUT_DIR [...]``: ONNX (+ int8) with parity checks and a card."""
    parser = _parser("export", export_main.__doc__)
    parser.add_argument("model", help="checkpoint folder, fetch name (e.g. smollm2-135m-instruct) or Hub id")
    parser.add_argument("output_dir")
    parser.add_argument("--backend", default="auto", choices=["auto", "optimum", "transformers"])
    parser.add_argument("--quantize", default="int8", choices=["int8", "none"])
    parser.add_argument(
        "--task", default="auto", choices=["auto", "text-generation-with-past", "text-classification"]
    )
    parser.add_argument("--arch", default="auto", choices=["auto", "avx512_vnni", "avx512", "avx2", "arm64"])
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--keep-fp32", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--fp32-layer",
        action="append",
        default=[],
        metavar="REGEX",
        help="MatMuls (node name / module path) kept fp32 in the int8 graph, e.g. down_proj",
    )
    parser.add_argument("--opset", type=int)
    parser.add_argument("--parity-atol", type=float, default=1e-3)
    parser.add_argument("--generate-tokens", type=int, default=8)
    parser.add_argument(
        "--optimum-python", help="python of the [optimum] env (default: $HF_COMPRESS_OPTIMUM_PYTHON)"
    )
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--eval-dataset", help="also measure ONNX perplexity on this text (PyTorch protocol)")
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--add-bos", action="store_true")
    parser.add_argument(
        "--latency", action="store_true", help="measure prefill / decode latency of the graph"
    )
    parser.add_argument("--no-card", action="store_true")
    _card_flags(parser)
    args = parser.parse_args(argv)
    _logging(args.quiet)

    def run() -> None:
        from .export import ExportConfig, export_onnx

        config = ExportConfig(
            backend=args.backend,
            quantize=None if args.quantize == "none" else args.quantize,
            task=args.task,
            arch=args.arch,
            per_channel=args.per_channel,
            fp32_layers=args.fp32_layer,
            keep_fp32=args.keep_fp32,
            opset=args.opset,
            parity_atol=args.parity_atol,
            generate_tokens=args.generate_tokens,
            optimum_python=args.optimum_python,
            overwrite=args.overwrite,
        )
        evaluation = None
        if args.eval_dataset:
            evaluation = {
                "dataset": args.eval_dataset,
                "seqlen": args.eval_seqlen,
                "max_windows": args.eval_windows,
                "add_bos": args.add_bos,
            }
        result = export_onnx(
            args.model,
            args.output_dir,
            config,
            evaluation=evaluation,
            latency=args.latency,
            card=False if args.no_card else _card_settings(args),
            progress=not args.quiet,
        )
        print(result.path)
        print(_export_summary(result.report))

    return _guard("export", run)


def card_main(argv: Sequence[str] | None = None) -> int:
    """``hf-compress card FOLDER``: re-render README.md from the folder's report (with overrides)."""
    parser = _parser("card", card_main.__doc__)
    parser.add_argument("folder")
    parser.add_argument("--template", help="a Jinja template instead of model_cards/compressed.md.j2")
    parser.add_argument(
        "--print", dest="print_only", action="store_true", help="print the card, write nothing"
    )
    _card_flags(parser)
    args = parser.parse_args(argv)
    _logging(args.quiet)

    def run() -> None:
        from .hub import create_model_card, write_model_card

        ctx = _stored_context(Path(args.folder), _card_settings(args))
        if args.print_only:
            print(create_model_card(ctx, args.template))
        else:
            print(write_model_card(ctx, args.folder, args.template))

    return _guard("card", run)


def push_main(argv: Sequence[str] | None = None) -> int:
    """``hf-compress push FOLDER REPO_ID``: upload a release folder to the Hub (create_repo + upload_folder)."""
    parser = _parser("push", push_main.__doc__)
    parser.add_argument("folder")
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", help="branch to commit to (created if missing)")
    parser.add_argument("--create-pr", action="store_true")
    parser.add_argument("--commit-message")
    parser.add_argument("--token", help="default: HF_TOKEN or the `hf auth login` token")
    parser.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--dry-run", action="store_true", help="check the folder and card, list the files")
    args = parser.parse_args(argv)
    _logging(args.quiet)

    def run() -> None:
        from .push import push_to_hub

        result = push_to_hub(
            args.folder,
            args.repo_id,
            token=args.token,
            private=args.private,
            revision=args.revision,
            create_pr=args.create_pr,
            commit_message=args.commit_message,
            dry_run=args.dry_run,
            endpoint=args.endpoint,
        )
        print(result.summary())
        if args.dry_run:
            for name, size in result.files.items():
                print(f"  {name}\t{size}")
            print(f"  commit message: {result.commit_message}")
            print(f"  token: {'found' if result.token_found else 'NOT found (hf auth login / HF_TOKEN)'}")

    return _guard("push", run)


# ----------------------------------------------------------------------------- helpers


def _parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"hf-compress {name}", description=(doc or "").strip())
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return parser


def _card_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo-id", help="Hub repo the card's loading snippet names")
    parser.add_argument("--base-model", help="Hub id of the model this one was made from")
    parser.add_argument("--license")
    parser.add_argument("--model-name")


def _card_settings(args) -> dict[str, Any]:
    keys = ("repo_id", "base_model", "license", "model_name")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None)}


def _stored_context(folder: Path, overrides: dict[str, Any]):
    """The card context stored in the folder's report, with ``overrides`` applied."""
    from .hub import CardContext

    for name in ("compression_report.json", "export_report.json"):
        file = folder / name
        if file.is_file():
            report = json.loads(file.read_text(encoding="utf-8"))
            if "card_settings" in report:  # an export: rebuilt from its figures with the current code
                from .release import export_card_context

                ctx = export_card_context(report, report["card_settings"])
                break
            if report.get("card"):
                ctx = CardContext.from_dict(report["card"])
                break
    else:
        raise FileNotFoundError(
            f"{folder} has no compression_report.json / export_report.json with a stored card"
        )
    repo_id = overrides.pop("repo_id", None)
    for key, value in overrides.items():
        setattr(ctx, key, value)
    if repo_id:
        ctx.load_snippet = _replace_repo(ctx.load_snippet, repo_id)
    CardContext.from_dict(ctx.to_dict())  # re-validate (relation, base_model)
    return ctx


def _replace_repo(snippet: str, repo_id: str) -> str:
    import re

    return re.sub(r'from_pretrained\("[^"]*"', f'from_pretrained("{repo_id}"', snippet)


def _export_summary(report: dict[str, Any]) -> str:
    lines = [f"backend {report['backend']}, task {report['task']}"]
    for variant, entry in report["files"].items():
        parity = report["parity"][variant]
        line = f"  {variant}: {entry['path']} {entry['bytes'] / 1e6:.1f} MB, max |logit diff| {parity['max_abs_diff']:.3g}"
        if (report.get("evaluation") or {}).get(variant):
            line += f", perplexity {report['evaluation'][variant]['ppl']:.3f}"
        if (report.get("latency") or {}).get(variant):
            lat = report["latency"][variant]
            line += f", prefill {lat['prefill_ms']:.0f} ms, decode {lat['decode_tokens_per_s']:.1f} tok/s"
        lines.append(line)
    return "\n".join(lines)


def _logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("hf_compress").setLevel(logging.WARNING if quiet else logging.INFO)


def _guard(name: str, run: Callable[[], None]) -> int:
    from .export import ExportParityError
    from .export_optimum import OptimumUnavailableError
    from .push import PushError
    from .reference_logits import ReferenceMismatchError

    expected = (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        OptimumUnavailableError,
        ExportParityError,
        ReferenceMismatchError,
        PushError,
    )
    try:
        run()
    except expected as err:
        print(f"hf-compress {name}: error: {err}", file=sys.stderr)
        return 2
    return 0
