#!/usr/bin/env python
"""Prove that a checkpoint folder loads as the same model under two transformers versions.

Standalone (imports only torch and transformers), so it runs in any environment, e.g. the
transformers 4.57 venv next to the 5.x one:

    # one step: dump under each interpreter, then compare (exit 1 on any difference)
    python scripts/check_cross_version.py run CKPT --python .venv/bin/python --python .venv457/bin/python \
        --text-file ../shared/data/wikitext-2/test.txt --text-file ../shared/data/gsm8k/test.jsonl

    # or by hand
    .venv/bin/python    scripts/check_cross_version.py dump CKPT /tmp/a.pt [CKPT2 /tmp/a2.pt ...]
    .venv457/bin/python scripts/check_cross_version.py dump CKPT /tmp/b.pt
    python scripts/check_cross_version.py compare /tmp/a.pt /tmp/b.pt

A dump holds, for a fixed set of texts: token ids (with the tokenizer's default special tokens,
so a BOS added in one version only shows up), the decoded text, special tokens and their ids,
the rendered chat template (if any), a padded batch, every RoPE ``inv_freq`` buffer, and the
fp32 logits (causal LMs) or last hidden states (encoders) of each text run alone. ``compare``
reports ids/decode/special/chat equality and max |logit diff|.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE_TEXTS = [
    "The quick brown fox jumps over the lazy dog",
    " over the lazy dog",
    "Numbers 12345, 3.14 and 1,000,000; symbols @-@ <unk> #### 42\n\nNew  paragraph\twith tab.",
    "Unicode: café naïve Zürich — 東京 🙂",
]
CHAT = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5."},
]
SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def read_texts(files: list[str], per_file: int) -> list[str]:
    """The probe texts plus ``per_file`` non-empty records from each .txt (lines) / .jsonl file."""
    texts = list(PROBE_TEXTS)
    for name in files:
        records: list[str] = []
        with open(name, encoding="utf-8") as handle:
            for line in handle:
                line = line.rstrip("\n")
                if name.endswith(".jsonl") and line.strip():
                    row = json.loads(line)
                    line = "\n".join(str(v) for v in row.values() if isinstance(v, str))
                if len(line.strip()) > 40:
                    records.append(line)
                if len(records) == per_file:
                    break
        texts += records
    return texts


def dump(
    ckpt: str, out: str, text_files: list[str], per_file: int, max_tokens: int, threads: int = 1
) -> None:
    """Load ``ckpt`` with the running transformers and save what :func:`compare` needs to ``out``.

    Runs torch on ``threads`` threads (restored afterwards): both sides of a comparison must use
    the same count, since fp32 sums depend on it (~1e-5), and one thread is fastest on a busy CPU.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _dump(ckpt, out, text_files, per_file, max_tokens)
    finally:
        torch.set_num_threads(previous)


def _dump(ckpt: str, out: str, text_files: list[str], per_file: int, max_tokens: int) -> None:
    import tokenizers
    import torch
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    config = AutoConfig.from_pretrained(ckpt)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    loader = AutoModelForCausalLM if causal else AutoModel
    model = loader.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager").eval()
    texts = read_texts(text_files, per_file)
    ids = [tok(t)["input_ids"] for t in texts]
    outputs = []
    with torch.no_grad():
        for seq in ids:
            x = torch.tensor([seq[:max_tokens]])
            result = model(input_ids=x, attention_mask=torch.ones_like(x))
            outputs.append((result.logits if causal else result.last_hidden_state)[0].float().clone())
    batch = tok(texts[:2], padding=True) if tok.pad_token is not None else None
    chat = None
    if getattr(tok, "chat_template", None):
        chat = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    data = {
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "tokenizers": tokenizers.__version__,
            "python": sys.version.split()[0],
        },
        "tokenizer_class": type(tok).__name__,
        "model_class": type(model).__name__,
        "kind": "logits" if causal else "last_hidden_state",
        "texts": texts,
        "ids": ids,
        "decoded": [tok.decode(seq) for seq in ids],
        "decoded_skip_special": [tok.decode(seq, skip_special_tokens=True) for seq in ids],
        "special": {
            name: [str(getattr(tok, name)), getattr(tok, name + "_id")]
            for name in SPECIAL
            if getattr(tok, name, None) is not None
        },
        "batch": None if batch is None else {k: list(v) for k, v in batch.items()},
        "chat": chat,
        "chat_ids": None if chat is None else tok(chat, add_special_tokens=False)["input_ids"],
        "inv_freq": {
            name: buf.float().clone() for name, buf in model.named_buffers() if name.endswith("inv_freq")
        },
        "outputs": outputs,
    }
    torch.save(data, out)
    print(
        f"dumped {len(texts)} texts with transformers {transformers.__version__} "
        f"({data['tokenizer_class']}, {data['model_class']}) -> {out}"
    )


def compare(path_a: str, path_b: str, atol: float) -> dict:
    """Compare two dumps; return a report dict with ``ok`` set when everything matches."""
    import torch

    a, b = torch.load(path_a, weights_only=False), torch.load(path_b, weights_only=False)
    report = {
        "a": a["versions"],
        "b": b["versions"],
        "tokenizer_class": [a["tokenizer_class"], b["tokenizer_class"]],
    }
    if a["texts"] != b["texts"]:
        raise SystemExit("the two dumps were made from different texts")
    for key in ("ids", "decoded", "decoded_skip_special", "special", "batch", "chat", "chat_ids"):
        report[f"{key}_equal"] = a[key] == b[key]
    first = next((i for i, (x, y) in enumerate(zip(a["ids"], b["ids"], strict=True)) if x != y), None)
    if first is not None:
        report["first_ids_mismatch"] = {
            "text": a["texts"][first][:80],
            "a": a["ids"][first][:16],
            "b": b["ids"][first][:16],
        }
    common = sorted(a["inv_freq"].keys() & b["inv_freq"].keys())  # 5.x also keeps `original_inv_freq`
    report["inv_freq_equal"] = bool(common) == bool(a["inv_freq"]) and all(
        torch.equal(a["inv_freq"][k], b["inv_freq"][k]) for k in common
    )
    shapes_ok = [x.shape == y.shape for x, y in zip(a["outputs"], b["outputs"], strict=True)]
    diffs = [
        (x - y).abs().max().item()
        for x, y in zip(a["outputs"], b["outputs"], strict=True)
        if x.shape == y.shape
    ]
    report["kind"] = a["kind"]
    report["texts"] = len(a["texts"])
    report["tokens"] = sum(x.shape[0] for x in a["outputs"])
    report["max_abs_diff"] = max(diffs) if diffs else float("nan")
    report["argmax_equal"] = all(s for s in shapes_ok) and all(
        torch.equal(x.argmax(-1), y.argmax(-1)) for x, y in zip(a["outputs"], b["outputs"], strict=True)
    )
    equal_keys = [k for k in report if k.endswith("_equal")]
    report["ok"] = all(report[k] for k in equal_keys) and all(shapes_ok) and report["max_abs_diff"] <= atol
    report["atol"] = atol
    return report


def run(ckpt: str, pythons: list[str], args: argparse.Namespace) -> dict:
    """Dump ``ckpt`` under each interpreter (subprocess) and compare every dump with the first."""
    common = [
        "--per-file",
        str(args.per_file),
        "--max-tokens",
        str(args.max_tokens),
        "--threads",
        str(args.threads),
    ]
    for name in args.text_file:
        common += ["--text-file", name]
    with tempfile.TemporaryDirectory(prefix="xver-") as tmp:
        dumps = []
        for i, python in enumerate(pythons):
            out = str(Path(tmp) / f"dump{i}.pt")
            cmd = [python, str(Path(__file__).resolve()), "dump", ckpt, out, *common]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(
                    f"dump failed under {python} (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
                )
            dumps.append(out)
        reports = [compare(dumps[0], other, args.atol) for other in dumps[1:]]
    return reports[0] if len(reports) == 1 else {"ok": all(r["ok"] for r in reports), "pairs": reports}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("dump", "run"):
        p = sub.add_parser(name)
        if name == "dump":
            p.add_argument(
                "pairs", nargs="+", metavar="CKPT OUT", help="checkpoint folder and dump file; repeatable"
            )
        else:
            p.add_argument("ckpt")
            p.add_argument("--python", action="append", required=True, help="interpreter (give two or more)")
            p.add_argument("--atol", type=float, default=1e-4)
        p.add_argument("--text-file", action="append", default=[], help=".txt (lines) or .jsonl; repeatable")
        p.add_argument("--per-file", type=int, default=4, help="records taken from each text file")
        p.add_argument("--max-tokens", type=int, default=64, help="tokens per text fed to the model")
        p.add_argument("--threads", type=int, default=1, help="torch threads (same on both sides)")
    p = sub.add_parser("compare")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if args.cmd == "dump":
        if len(args.pairs) % 2:
            parser.error("dump takes pairs: CKPT OUT [CKPT OUT ...]")
        for ckpt, out in zip(args.pairs[::2], args.pairs[1::2], strict=True):
            dump(ckpt, out, args.text_file, args.per_file, args.max_tokens, args.threads)
        return 0
    report = (
        compare(args.a, args.b, args.atol) if args.cmd == "compare" else run(args.ckpt, args.python, args)
    )
    print(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
