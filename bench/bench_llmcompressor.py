"""Quality, speed and memory of hf-compress pruning against llm-compressor 0.14, side by side.

Same model (SmolLM2-135M-Instruct, fp32), the same calibration windows (64 x 512 tokens drawn once
from ``wikitext-2/valid.txt`` with seed 0 and saved to one ``.pt`` file that both tools load), the
same settings (layer-sequential with error propagation, every Linear inside the decoder layers,
damping 0.01, block 128, calibration batch 8), and one evaluator (``hf_compress.evaluate.perplexity``,
first 64 x 512-token windows of ``wikitext-2/test.txt``) on both saved checkpoints.

Each tool prunes in its own process: ours in this venv (``bench/_hfc_side.py``), llm-compressor in
``.venv-llmc`` (``bench/_llmcompressor_side.py``; it pins transformers <= 5.17, see
``scripts/setup_llmcompressor_venv.sh``). Each process times its pruning call alone (wall and CPU
seconds; model load and save excluded) and reports its peak RSS (``VmHWM``) at the end of
pruning. Every reloaded checkpoint is checked before it is scored: no compressed-tensors
``quantization_config``, embeddings identical to the dense model's (so the weights really loaded),
decoder sparsity at the target and 2:4 holding where asked.

    bash scripts/setup_llmcompressor_venv.sh           # once
    .venv/bin/python bench/bench_llmcompressor.py      # full run, writes bench/results/llmcompressor.{md,json}
    .venv/bin/python bench/bench_llmcompressor.py --quick --methods wanda   # smoke run

Targets (issue 2, item 9): perplexity <= llm-compressor's; pruning wall time <= 0.5x; peak RSS <= 1.0x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HF_COMPRESS_DATA", ROOT.parent / "shared" / "data"))
MODEL = "smollm2-135m-instruct"
METHODS = ("sparsegpt", "wanda")
PATTERNS = ("unstructured", "2:4")
SPARSITY = 0.5
TIME_TARGET, MEMORY_TARGET = 0.5, 1.0
DOCS_BEGIN, DOCS_END = "<!-- bench_llmcompressor:begin -->", "<!-- bench_llmcompressor:end -->"
T0 = time.perf_counter()


def log(message: str) -> None:
    """Progress line with the elapsed time."""
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of sparsegpt, wanda")
    parser.add_argument("--patterns", default=",".join(PATTERNS), help="comma list of unstructured, 2:4")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 calibration and 8 eval windows")
    parser.add_argument("--calib-windows", type=int, default=None, help="default 64 (8 with --quick)")
    parser.add_argument("--eval-windows", type=int, default=None, help="default 64 (8 with --quick)")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument(
        "--batch-size", type=int, default=8, help="calibration windows per forward, both tools"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for both children and the evaluations (1 on a busy machine)",
    )
    parser.add_argument("--llmc-python", default=str(ROOT / ".venv-llmc" / "bin" / "python"))
    parser.add_argument("--work-dir", default=str(ROOT / ".cache" / "bench_llmcompressor"))
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--docs", action="store_true", help="also replace the table in docs/benchmarks.md")
    parser.add_argument("--profile-ours", action="store_true", help="cProfile our prune calls (slower)")
    parser.add_argument("--verbose", action="store_true", help="stream the children's output")
    parser.add_argument(
        "--keep-models", action="store_true", help="keep the pruned checkpoints in --work-dir"
    )
    args = parser.parse_args(argv)
    args.methods = _choices("methods", args.methods, METHODS)
    args.patterns = _choices("patterns", args.patterns, PATTERNS)
    default_windows = 8 if args.quick else 64
    args.calib_windows = args.calib_windows or default_windows
    args.eval_windows = args.eval_windows or default_windows
    if not Path(args.llmc_python).exists():
        parser.error(f"--llmc-python {args.llmc_python} not found; run scripts/setup_llmcompressor_venv.sh")
    return args


def _choices(name: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"--{name}={value!r}: allowed values are {', '.join(allowed)}")
    return items


def write_calibration(tokenizer, path: Path, n: int, seqlen: int) -> dict:
    """Draw the calibration windows once and save them for both tools."""
    from hf_compress.calibration import calibration_windows

    source = DATA / "wikitext-2" / "valid.txt"
    calib = calibration_windows(tokenizer, str(source), seqlen=seqlen, n_windows=n, seed=0)
    torch.save({"input_ids": calib.input_ids.clone(), "attention_mask": calib.attention_mask.clone()}, path)
    return {
        "source": str(source.relative_to(DATA)),
        "windows": n,
        "seqlen": seqlen,
        "seed": 0,
        "stream_tokens": calib.n_tokens,
    }


def evaluate(path: Path, tokenizer, eval_windows: int, seqlen: int):
    """Perplexity of the checkpoint at ``path`` with our evaluator (the same for every model)."""
    from transformers import AutoModelForCausalLM

    from hf_compress.evaluate import perplexity

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    result = perplexity(
        model,
        tokenizer,
        str(DATA / "wikitext-2" / "test.txt"),
        seqlen=seqlen,
        max_windows=eval_windows,
        progress=False,
    )
    return model, result


def check_checkpoint(path: Path, model, dense_embed: torch.Tensor, pattern: str) -> dict:
    """Refuse a checkpoint that did not reload as the pruned weights (see the module docstring)."""
    from hf_compress import sparsity_report

    config = json.loads((path / "config.json").read_text())
    if "quantization_config" in config or "compression_config" in config:
        raise RuntimeError(f"{path}: config.json carries a compression config; expected a dense save")
    embed = model.get_input_embeddings().weight.detach()
    if not torch.equal(embed, dense_embed):
        raise RuntimeError(f"{path}: embeddings differ from the dense model's: weights did not load")
    report = sparsity_report(model)
    if abs(report.total - SPARSITY) > 0.01:
        raise RuntimeError(f"{path}: decoder sparsity {report.total:.4f} after reload, expected {SPARSITY}")
    if pattern == "2:4" and not report.pattern_holds("2:4"):
        raise RuntimeError(f"{path}: 2:4 pattern does not hold after reload")
    return {"decoder_sparsity": report.total, "holds_2_4": report.pattern_holds("2:4")}


def run_side(side: str, args, model_path: Path, calib: Path, method: str, pattern: str) -> dict:
    """Prune one config in a child process; returns its result JSON plus the parent-side wall time."""
    work = Path(args.work_dir)
    tag = f"{side}-{method}-{pattern.replace(':', '_')}"
    out, result, log_path = work / "models" / tag, work / "runs" / f"{tag}.json", work / "logs" / f"{tag}.log"
    for folder in (out.parent, result.parent, log_path.parent):
        folder.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    python, script = (
        (sys.executable, "_hfc_side.py") if side == "ours" else (args.llmc_python, "_llmcompressor_side.py")
    )
    cmd = [
        python,
        str(ROOT / "bench" / script),
        "--model",
        str(model_path),
        "--calib",
        str(calib),
        "--method",
        method,
        "--pattern",
        pattern,
        "--sparsity",
        str(SPARSITY),
        "--batch-size",
        str(args.batch_size),
        "--out",
        str(out),
        "--result",
        str(result),
    ]
    if side == "ours" and args.profile_ours:
        cmd += ["--profile", str(work / "runs" / f"{tag}.prof")]
    load = os.getloadavg()[0]
    tic = time.perf_counter()
    with open(log_path, "w") as fh:
        sink = None if args.verbose else fh
        proc = subprocess.run(cmd, cwd=ROOT, env=_child_env(args), stdout=sink, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - tic
    if proc.returncode != 0 or not result.exists():
        tail = "" if args.verbose else "\n".join(log_path.read_text().splitlines()[-30:])
        raise RuntimeError(f"{tag} failed (exit {proc.returncode}); log {log_path}\n{tail}")
    data = json.loads(result.read_text())
    data.update(process_wall_seconds=wall, loadavg_1min_before=load, checkpoint=str(out), log=str(log_path))
    return data


def _child_env(args) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if args.threads:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = str(args.threads)
    return env


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours is not None and theirs else None


def summarize(method: str, pattern: str, sides: dict[str, dict]) -> dict:
    ours, llmc = sides["ours"], sides["llmc"]
    row = {
        "config": f"{method} {'50% unstructured' if pattern == 'unstructured' else pattern}",
        "method": method,
        "pattern": pattern,
        "ppl_ours": ours["ppl"],
        "ppl_llmc": llmc["ppl"],
        "s_ours": ours["prune_seconds"],
        "s_llmc": llmc["prune_seconds"],
        "cpu_s_ours": ours["prune_cpu_seconds"],
        "cpu_s_llmc": llmc["prune_cpu_seconds"],
        "rss_ours_mib": ours["peak_rss_prune_mib"],
        "rss_llmc_mib": llmc["peak_rss_prune_mib"],
    }
    row["time_ratio"] = ratio(row["s_ours"], row["s_llmc"])
    row["cpu_time_ratio"] = ratio(row["cpu_s_ours"], row["cpu_s_llmc"])
    row["memory_ratio"] = ratio(row["rss_ours_mib"], row["rss_llmc_mib"])
    row["targets"] = {
        "ppl": row["ppl_ours"] <= row["ppl_llmc"],
        "time": row["time_ratio"] <= TIME_TARGET,
        "memory": row["memory_ratio"] <= MEMORY_TARGET,
    }
    return row


def ppl_mark(row: dict) -> str:
    """``ok`` when ours is no worse; otherwise ``MISS`` with the relative gap."""
    if row["targets"]["ppl"]:
        return "ok"
    return f"MISS (+{100 * (row['ppl_ours'] / row['ppl_llmc'] - 1):.2f}%)"


def markdown(rows: list[dict], meta: dict) -> str:
    """The printed table (the same text goes to bench/results and docs/benchmarks.md)."""
    mark = {True: "ok", False: "MISS"}
    lines = [
        f"Dense perplexity: **{meta['dense_ppl']:.3f}**. Targets: ppl ours <= llmc, time ratio <= {TIME_TARGET}, "
        f"memory ratio <= {MEMORY_TARGET}.",
        "",
        "| config | ppl ours | ppl llmc | s ours | s llmc | time ratio | peak RSS ours | peak RSS llmc "
        "| memory ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["targets"]
        lines.append(
            f"| {r['config']} | {r['ppl_ours']:.3f} {ppl_mark(r)} | {r['ppl_llmc']:.3f} | {r['s_ours']:.1f} | "
            f"{r['s_llmc']:.1f} | {r['time_ratio']:.2f}x {mark[t['time']]} | {r['rss_ours_mib']:.0f} MiB | "
            f"{r['rss_llmc_mib']:.0f} MiB | {r['memory_ratio']:.2f}x {mark[t['memory']]} |"
        )
    lines += [
        "",
        "CPU seconds of the pruning call (all threads; steadier than wall time on a shared machine):",
        "",
        "| config | CPU s ours | CPU s llmc | CPU ratio | RSS after load ours | RSS after load llmc |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r, sides in zip(rows, meta["sides"], strict=True):
        lines.append(
            f"| {r['config']} | {r['cpu_s_ours']:.1f} | {r['cpu_s_llmc']:.1f} | {r['cpu_time_ratio']:.2f}x | "
            f"{sides['ours']['rss_after_load_mib']:.0f} MiB | {sides['llmc']['rss_after_load_mib']:.0f} MiB |"
        )
    lines += [
        "",
        f"Protocol: {meta['protocol']}",
        "",
        f"Calibration: {meta['calibration']['windows']} x {meta['calibration']['seqlen']} tokens from "
        f"{meta['calibration']['source']} (seed 0), batch {meta['batch_size']}, the same tokens for both tools.",
        "",
        f"Machine: {meta['machine']}; load average {meta['loadavg_start']:.1f} at start, "
        f"{meta['loadavg_end']:.1f} at end.",
        "",
        f"Versions: ours {meta['versions']['ours']}; llm-compressor side {meta['versions']['llmc']}.",
        "",
    ]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def update_docs(table: str) -> Path:
    """Replace the block between the markers in docs/benchmarks.md (append it if absent)."""
    docs = ROOT / "docs" / "benchmarks.md"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{DOCS_BEGIN}\n{table}\n{DOCS_END}"
    if DOCS_BEGIN in text and DOCS_END in text:
        head, rest = text.split(DOCS_BEGIN, 1)
        text = head + block + rest.split(DOCS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_atomic(docs, text)
    return docs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # this script's own output only: the weight-loading bars

    from hf_compress.fetch import fetch_model

    if args.threads:
        torch.set_num_threads(args.threads)  # the evaluations here run with the children's thread count
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    loadavg_start = os.getloadavg()[0]
    model_path = fetch_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    calib_path = work / "calib.pt"
    calibration = write_calibration(tokenizer, calib_path, args.calib_windows, args.seqlen)
    log(f"calibration: {args.calib_windows} x {args.seqlen} tokens -> {calib_path}")

    dense, dense_ppl = evaluate(model_path, tokenizer, args.eval_windows, args.seqlen)
    dense_embed = dense.get_input_embeddings().weight.detach().clone()
    del dense
    log(f"dense ppl {dense_ppl.ppl:.3f} ({dense_ppl.seconds:.0f} s)")

    rows, all_sides = [], []
    for method in args.methods:
        for pattern in args.patterns:
            sides = {}
            for side in ("ours", "llmc"):
                log(f"{method} {pattern}: pruning with {side} ...")
                data = run_side(side, args, model_path, calib_path, method, pattern)
                log(
                    f"{method} {pattern}: {side} pruned in {data['prune_seconds']:.1f} s "
                    f"(CPU {data['prune_cpu_seconds']:.1f} s), peak RSS {data['peak_rss_prune_mib']:.0f} MiB; "
                    "evaluating ..."
                )
                model, result = evaluate(Path(data["checkpoint"]), tokenizer, args.eval_windows, args.seqlen)
                data["checks"] = check_checkpoint(Path(data["checkpoint"]), model, dense_embed, pattern)
                del model
                data["ppl"], data["eval"] = result.ppl, result.to_dict()
                log(f"{method} {pattern}: {side} ppl {result.ppl:.3f}")
                sides[side] = data
            rows.append(summarize(method, pattern, sides))
            all_sides.append(sides)
            if not args.keep_models:
                for data in sides.values():
                    shutil.rmtree(data["checkpoint"], ignore_errors=True)

    meta = {
        "model": MODEL,
        "dense_ppl": dense_ppl.ppl,
        "protocol": dense_ppl.protocol.describe(),
        "calibration": calibration,
        "batch_size": args.batch_size,
        "quick": args.quick,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={args.threads or os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads "
        f"{all_sides[0]['ours']['torch_threads']} (ours) / {all_sides[0]['llmc']['torch_threads']} (llmc)",
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg()[0],
        "versions": {"ours": all_sides[0]["ours"]["versions"], "llmc": all_sides[0]["llmc"]["versions"]},
        "sides": all_sides,
    }
    table = markdown(rows, meta)
    print("\n" + table)
    results = Path(args.results_dir)
    stem = "llmcompressor_quick" if args.quick else "llmcompressor"
    write_atomic(
        results / f"{stem}.md", f"# hf-compress vs llm-compressor: pruning SmolLM2-135M-Instruct\n\n{table}"
    )
    write_atomic(results / f"{stem}.json", json.dumps({"rows": rows, **meta}, indent=2, default=str))
    log(f"wrote {results / (stem + '.md')} and .json")
    if args.docs:
        log(f"updated {update_docs(table)}")


if __name__ == "__main__":
    main()
