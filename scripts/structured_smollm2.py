#!/usr/bin/env python
"""SmolLM2-135M-Instruct with a fraction of its decoder parameters removed (uniform shapes), then proven.

Prunes, writes a portable checkpoint, reloads it with plain ``from_pretrained`` (nothing from
hf_compress), checks that its logits equal the in-memory pruned model's, generates with the KV cache
(and checks the cached tokens against full forwards), then loads the folder under transformers 4.57
(``--compat-python``) and compares token ids and logits there too (``scripts/check_cross_version.py``).

    python scripts/structured_smollm2.py --out /tmp/smollm2-structured --targets heads ffn --importance taylor
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from hf_compress.calibration import calibration_windows
from hf_compress.models.loading import load_causal_lm
from hf_compress.portable import save_pretrained_portable
from hf_compress.recipes import data_dir
from hf_compress.structured import StructuredConfig, prune_structured

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    data = data_dir()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", required=True)
    p.add_argument("--targets", nargs="+", default=["heads", "ffn"])
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument("--importance", default="taylor")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--calib", default=str(data / "wikitext-2" / "valid.txt"))
    p.add_argument("--n-samples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--probe", default=str(data / "wikitext-2" / "test.txt"), help="text for the logits check")
    p.add_argument("--compat-python", default=str(REPO / ".venv457" / "bin" / "python"))
    p.add_argument("--scores", default=None, help="scores cache of scripts/structured_table.py (same model)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_causal_lm(args.model)
    config = StructuredConfig(
        targets=args.targets,
        sparsity=args.sparsity,
        importance=args.importance,
        round_to=args.round_to,
        n_samples=args.n_samples,
        seqlen=args.seqlen,
    )
    calib, scores = None, None
    if args.scores:
        scores = torch.load(args.scores, weights_only=False)[args.importance]
    elif config.needs_calibration:
        calib = calibration_windows(tokenizer, args.calib, seqlen=args.seqlen, n_windows=args.n_samples)
    prune_structured(model, config, dataset=calib, scores=scores)
    report = model.hf_compress_report
    out = save_pretrained_portable(
        model,
        tokenizer,
        args.out,
        overwrite=args.overwrite,
        extra_files={"structured_report.json": json.dumps(report.to_dict(), indent=2)},
    )
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    probe = Path(args.probe).read_text(encoding="utf-8")[:20000]
    ids = tokenizer(probe, return_tensors="pt").input_ids[:, :512]
    with torch.no_grad():
        a, b = model(ids).logits, reloaded(ids).logits
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    generated = reloaded.generate(**prompt, max_new_tokens=32, do_sample=False)
    n = prompt["input_ids"].shape[1]
    with torch.no_grad():
        full = reloaded(generated, use_cache=False).logits[0, n - 1 : -1].argmax(-1)
    summary = {
        "report": report.summary(),
        "plain_config": report.plain_config,
        "config_json": {
            k: json.loads((out / "config.json").read_text())[k]
            for k in (
                "hidden_size",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "intermediate_size",
                "num_hidden_layers",
            )
        },
        "logits_identical_after_reload": bool(torch.equal(a, b)),
        "max_abs_logit_diff": float((a - b).abs().max()),
        "probe_tokens": ids.shape[1],
        "generated": tokenizer.decode(generated[0, n:], skip_special_tokens=True),
        "cached_generation_matches_full_forward": bool(torch.equal(full, generated[0, n:])),
        "cross_version": cross_version(out, args),
    }
    print(json.dumps(summary, indent=2))
    return 0 if summary["logits_identical_after_reload"] and summary["cross_version"].get("ok") else 1


def cross_version(folder: Path, args: argparse.Namespace) -> dict:
    if not Path(args.compat_python).is_file():
        return {"ok": False, "error": f"no interpreter at {args.compat_python}"}
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "check_cross_version.py"),
        "run",
        str(folder),
        "--python",
        sys.executable,
        "--python",
        args.compat_python,
        "--atol",
        "1e-5",
        "--text-file",
        args.probe,
        "--max-tokens",
        "128",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"ok": False, "error": proc.stderr[-2000:]}
    keep = (
        "ok",
        "max_abs_diff",
        "ids_equal",
        "decoded_equal",
        "chat_equal",
        "inv_freq_equal",
        "tokens",
        "a",
        "b",
    )
    return {k: report.get(k) for k in keep}


if __name__ == "__main__":
    sys.exit(main())
