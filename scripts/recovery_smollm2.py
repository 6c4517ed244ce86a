"""Recovery after pruning on SmolLM2-135M-Instruct: dense / pruned / LoRA (LM loss) / LoRA (KD).

Each step is a separate invocation (run them one at a time; results accumulate in a JSON file)::

    python scripts/recovery_smollm2.py dense            # perplexity of the dense model
    python scripts/recovery_smollm2.py prune            # SparseGPT 2:4 (64 x 512 calibration windows of valid.txt)
    python scripts/recovery_smollm2.py lm --budget 600  # LoRA, LM loss on valid.txt, 600 CPU seconds
    python scripts/recovery_smollm2.py kd --budget 600  # LoRA, KD from the dense model, same budget
    python scripts/recovery_smollm2.py report           # the table + fraction of the gap closed

The recovered models are saved under ``WORK/{2of4,structured}/lora_{lm,kd}`` (for ``bench/bench_export.py``).

``--structured 0.25`` runs the same on a model with 25% of its decoder parameters removed
(``prune_structured``: query heads + FFN neurons, Taylor importance on 16 x 512 tokens of valid.txt).
Perplexity: the first 64 non-overlapping 512-token windows of wikitext-2/test.txt, no BOS, fp32.
The budget is CPU time of this process (``time.process_time``, all threads), so other jobs on a
shared machine do not change how much training each recovery gets.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _paths(args) -> dict[str, Path]:
    work = Path(args.work_dir) / ("structured" if args.structured else "2of4")
    work.mkdir(parents=True, exist_ok=True)
    return {"work": work, "pruned": work / "pruned.pt", "results": work / "results.json"}


def _load():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_compress.fetch import fetch_model

    path = fetch_model("smollm2-135m-instruct")
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32
    ).eval(), AutoTokenizer.from_pretrained(path)


def _ppl(model, tok, args) -> dict:
    from hf_compress.evaluate import perplexity

    r = perplexity(
        model, tok, str(DATA / "wikitext-2" / "test.txt"), seqlen=512, max_windows=64, progress=not args.quiet
    )
    return {"ppl": r.ppl, "nll": r.nll, "protocol": r.protocol.describe(), "seconds": r.seconds}


def _save(paths, key: str, value) -> None:
    results = json.loads(paths["results"].read_text()) if paths["results"].is_file() else {}
    results[key] = value
    paths["results"].write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({key: value}, indent=2, default=str))


def _pruned(args, paths):
    if args.structured:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = paths["work"] / "pruned"
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        return model, AutoTokenizer.from_pretrained(folder)
    model, tok = _load()
    model.load_state_dict(torch.load(paths["pruned"]))
    return model, tok


def step_dense(args, paths) -> None:
    model, tok = _load()
    _save(paths, "dense", _ppl(model, tok, args))


def step_prune(args, paths) -> None:
    import hf_compress as hfc

    model, tok = _load()
    tic = time.perf_counter()
    valid = str(DATA / "wikitext-2" / "valid.txt")
    if args.structured:
        from hf_compress.portable import save_pretrained_portable
        from hf_compress.structured import StructuredConfig, prune_structured

        config = StructuredConfig(targets=["heads", "ffn"], sparsity=args.structured, importance="taylor",
                                  round_to=8, n_samples=16, seqlen=512)  # fmt: skip
        prune_structured(model, config, dataset=valid, tokenizer=tok, progress=not args.quiet)
        seconds = time.perf_counter() - tic
        save_pretrained_portable(model, tok, paths["work"] / "pruned", overwrite=True)
        params = sum(p.numel() for p in model.parameters())
        out = _ppl(model, tok, args) | {"prune_seconds": seconds, "parameters": params}
        _save(paths, "pruned", out | {"report": model.hf_compress_report.summary()})
        return
    hfc.prune(
        model,
        hfc.PrunerConfig(method="sparsegpt", pattern="2:4", n_samples=64, seqlen=512),
        dataset=valid,
        tokenizer=tok,
    )
    seconds = time.perf_counter() - tic
    torch.save(model.state_dict(), paths["pruned"])
    out = _ppl(model, tok, args) | {"prune_seconds": seconds, "sparsity": hfc.sparsity_report(model).total}
    _save(paths, "pruned", out)


def step_recover(args, paths, loss: str) -> None:
    import hf_compress as hfc
    from hf_compress.recover import RecoveryConfig, recover_with_lora

    model, tok = _pruned(args, paths)
    zeros_before = {n: p.detach() == 0 for n, p in model.named_parameters()}
    teacher = _load()[0] if loss == "kd" else None
    config = RecoveryConfig(
        loss=loss, rank=args.rank, lora_alpha=2.0 * args.rank, seqlen=args.seqlen, batch_size=args.batch_size,
        max_steps=args.max_steps, max_seconds=args.budget, clock="process", learning_rate=args.lr,
        lr_scheduler_type="constant_with_warmup", warmup_steps=args.warmup, logging_steps=5, seed=0,
    )  # fmt: skip
    tic = time.perf_counter()
    model = recover_with_lora(model, str(DATA / "wikitext-2" / "valid.txt"), teacher, tokenizer=tok, config=config,
                              progress=not args.quiet)  # fmt: skip
    wall = time.perf_counter() - tic
    report = model.hf_compress_recovery
    after = {n: p.detach() == 0 for n, p in model.named_parameters()}
    identical = all(torch.equal(zeros_before[n], after[n]) for n in zeros_before)
    out = _ppl(model, tok, args) | {
        "steps": report.steps, "tokens": report.tokens, "wall_seconds": wall, "budget_cpu_seconds": args.budget,
        "stopped_by_budget": report.stopped_by_budget, "masked_update": report.masked_update,
        "sparsity_before": report.sparsity_before, "sparsity_after": report.sparsity_after,
        "zero_positions_identical": identical, "zeros_lost": report.zeros_lost, "zeros_gained": report.zeros_gained,
        "patterns_after": report.patterns_after, "losses": report.losses, "config": report.config,
        "sparsity_report_total": hfc.sparsity_report(model).total,
    }  # fmt: skip
    _save(paths, f"lora_{loss}", out)
    from hf_compress.portable import save_pretrained_portable

    save_pretrained_portable(model, tok, paths["work"] / f"lora_{loss}", overwrite=True)  # for bench_export.py


def _nll(result: dict) -> float:
    return result.get("nll", math.log(result["ppl"]))


def step_report(args, paths) -> None:
    results = json.loads(paths["results"].read_text())
    dense, pruned = results["dense"], results["pruned"]
    print(f"{'model':<10} {'ppl':>8} {'gap closed (ppl)':>17} {'(nll)':>7} {'steps':>6} {'tokens':>7} "
          f"{'train wall s':>12}  zeros before -> after")  # fmt: skip
    print(f"{'dense':<10} {dense['ppl']:>8.3f}")
    print(f"{'pruned':<10} {pruned['ppl']:>8.3f}")
    for key in ("lora_lm", "lora_kd"):
        if key in results:
            r = results[key]
            closed = (pruned["ppl"] - r["ppl"]) / (pruned["ppl"] - dense["ppl"])
            closed_nll = (_nll(pruned) - _nll(r)) / (_nll(pruned) - _nll(dense))
            print(f"{key:<10} {r['ppl']:>8.3f} {closed:>17.1%} {closed_nll:>7.1%} {r['steps']:>6} {r['tokens']:>7} "
                  f"{r['wall_seconds']:>12.0f}  {r['sparsity_before']:.6f} -> {r['sparsity_after']:.6f} "
                  f"identical={r['zero_positions_identical']}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["dense", "prune", "lm", "kd", "report"])
    p.add_argument("--work-dir", default="/tmp/hfc-recovery")
    p.add_argument("--structured", type=float, default=None, help="structured pruning ratio instead of 2:4")
    p.add_argument("--budget", type=float, default=600.0, help="CPU seconds of training per recovery")
    p.add_argument("--max-steps", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = _paths(args)
    steps = {"dense": step_dense, "prune": step_prune, "report": step_report,
             "lm": lambda a, p: step_recover(a, p, "lm"), "kd": lambda a, p: step_recover(a, p, "kd")}  # fmt: skip
    steps[args.step](args, paths)


if __name__ == "__main__":
    main()
