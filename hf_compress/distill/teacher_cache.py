"""Offline distillation: run the teacher once and store its top-k log-probabilities per token.

``cache_teacher_topk`` writes parquet shards (a ``datasets`` dataset) with, for every token position
``t`` of every example, the teacher's ``k`` most likely next tokens, their log-probabilities at the
given temperature and the log of the remaining (tail) mass. Training from the cache needs no
teacher in memory and gives the same loss as online top-k distillation (``DistillationConfig.top_k``)
because both compare the student with the same k+1-bin summary (:func:`~.losses.topk_kd_loss`).

Command line::

    python -m hf_compress.distill.teacher_cache --teacher DIR --dataset FILE --out DIR --k 64
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, Features, Value
from datasets import Sequence as DsSequence
from tqdm.auto import tqdm

from .chunked import default_chunk_size
from .forward import backbone_hidden
from .heads import compared_vocab, lm_head, vocab_fingerprint
from .losses import teacher_topk

logger = logging.getLogger(__name__)

IDS, LOGPROBS, TAIL, TEMPERATURE = (
    "teacher_topk_ids",
    "teacher_topk_logprobs",
    "teacher_tail_logprob",
    "teacher_temperature",
)
CACHE_COLUMNS = (IDS, LOGPROBS, TAIL, TEMPERATURE)
META_FILE = "distill_cache.json"


def is_teacher_cache(dataset: Any) -> bool:
    """Whether ``dataset`` carries the teacher-cache columns."""
    names = getattr(dataset, "column_names", None) or []
    return all(col in names for col in CACHE_COLUMNS)


def _tokenize(dataset: Dataset, tokenizer, text_field: str, max_length: int | None, add_eos: bool) -> Dataset:
    """``input_ids`` (and ``labels`` when present) for each example, truncated from the end."""
    if "input_ids" not in dataset.column_names:
        if tokenizer is None:
            raise ValueError("cache_teacher_topk needs a tokenizer for a text dataset (no input_ids column)")
        eos = tokenizer.eos_token or ""

        def encode(example):
            text = example[text_field]
            if add_eos and eos and not text.endswith(eos):
                text += eos
            return {"input_ids": tokenizer(text)["input_ids"]}

        dataset = dataset.map(encode, remove_columns=dataset.column_names, desc="Tokenizing")
    keep = [c for c in ("input_ids", "labels") if c in dataset.column_names]
    dataset = dataset.select_columns(keep)
    if max_length:
        dataset = dataset.map(lambda ex: {c: ex[c][:max_length] for c in keep}, desc="Truncating")
    return dataset


def _features(has_labels: bool) -> Features:
    cols = {"input_ids": DsSequence(Value("int32"))}
    if has_labels:
        cols["labels"] = DsSequence(Value("int32"))
    cols[IDS] = DsSequence(DsSequence(Value("int32")))
    cols[LOGPROBS] = DsSequence(DsSequence(Value("float32")))
    cols[TAIL] = DsSequence(Value("float32"))
    cols[TEMPERATURE] = Value("float32")
    return Features(cols)


@torch.no_grad()
def _teacher_rows(
    teacher, rows: list[dict], k: int, temperature: float, vocab: int, pad_id: int
) -> list[dict]:
    """Top-k summaries for a batch of tokenized rows (right-padded forward, chunked over positions)."""
    device = next(teacher.parameters()).device
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
        mask[i, : len(row["input_ids"])] = 1
    hidden = backbone_hidden(teacher, {"input_ids": ids.to(device), "attention_mask": mask.to(device)})
    head, chunk = lm_head(teacher), default_chunk_size(vocab)
    out = []
    for i, row in enumerate(rows):
        h = hidden[i, : len(row["input_ids"])]
        parts = [
            teacher_topk(head.finish(head.logits(h[s : s + chunk], vocab)), k, temperature)
            for s in range(0, h.shape[0], chunk)
        ]
        top_ids, top_logp, tail = (torch.cat(p).cpu() for p in zip(*parts, strict=True))
        out.append(
            {
                **row,
                IDS: top_ids.int().tolist(),
                LOGPROBS: top_logp.tolist(),
                TAIL: tail.tolist(),
                TEMPERATURE: temperature,
            }
        )
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; an existing ``out`` is only removed after the move succeeded."""
    old = out.with_name(out.name + ".old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


def cache_teacher_topk(
    teacher,
    dataset: Dataset,
    out_dir: str | Path,
    k: int,
    tokenizer=None,
    temperature: float = 1.0,
    max_length: int | None = None,
    batch_size: int = 8,
    shard_rows: int = 4096,
    dataset_text_field: str = "text",
    add_eos: bool = True,
) -> Path:
    """Run ``teacher`` over ``dataset`` and write its top-k log-probabilities as parquet shards.

    Args:
        teacher: a transformers causal LM (any device; evaluated without gradients).
        dataset: tokenized (``input_ids``, optional ``labels``) or text (``dataset_text_field``) rows.
        out_dir: output folder (written to a temporary sibling, then renamed into place).
        k: tokens kept per position (``>= 1``).
        tokenizer: needed for text rows; its vocabulary fingerprint is recorded.
        temperature: softmax temperature of the stored log-probabilities (training must use the same).
        max_length: truncate sequences to this many tokens (keep the start).
        batch_size: sequences per teacher forward.
        shard_rows: rows per parquet shard.

    Returns:
        ``out_dir`` as a ``Path``; load it with :func:`load_teacher_cache`.
    """
    if k < 1 or not temperature > 0:
        raise ValueError(f"cache_teacher_topk: k={k!r} must be >= 1 and temperature={temperature!r} > 0")
    out = Path(out_dir)
    rows_ds = _tokenize(dataset, tokenizer, dataset_text_field, max_length, add_eos)
    vocab = compared_vocab(teacher, None, tokenizer)
    pad_id = (tokenizer.pad_token_id if tokenizer is not None else None) or 0
    features = _features("labels" in rows_ds.column_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    teacher.eval()
    try:
        buffer, n_shards = [], 0
        for start in tqdm(range(0, len(rows_ds), batch_size), desc="Teacher top-k", unit="batch"):
            buffer += _teacher_rows(
                teacher,
                list(rows_ds.select(range(start, min(start + batch_size, len(rows_ds))))),
                k,
                temperature,
                vocab,
                pad_id,
            )
            if len(buffer) >= shard_rows or start + batch_size >= len(rows_ds):
                Dataset.from_list(buffer, features=features).to_parquet(
                    str(tmp / f"data-{n_shards:05d}.parquet")
                )
                buffer, n_shards = [], n_shards + 1
        meta = {
            "k": k,
            "temperature": temperature,
            "vocab_size": vocab,
            "rows": len(rows_ds),
            "shards": n_shards,
            "teacher": str(getattr(teacher.config, "_name_or_path", "")),
            "tokenizer_fingerprint": vocab_fingerprint(tokenizer) if tokenizer is not None else None,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %d rows of teacher top-%d to %s", len(rows_ds), k, out)
    return out


def read_cache_meta(path: str | Path) -> dict:
    """The ``distill_cache.json`` metadata of a cache folder."""
    return json.loads((Path(path) / META_FILE).read_text())


def load_teacher_cache(path: str | Path, tokenizer=None) -> Dataset:
    """Load a cache written by :func:`cache_teacher_topk`; checks the tokenizer fingerprint when given."""
    meta = read_cache_meta(path)
    if tokenizer is not None and meta.get("tokenizer_fingerprint") not in (
        None,
        vocab_fingerprint(tokenizer),
    ):
        raise ValueError(
            f"the teacher cache at {path} was made with a different tokenizer than the student's"
        )
    files = sorted(str(p) for p in Path(path).glob("data-*.parquet"))
    return Dataset.from_parquet(files)


class TeacherCacheCollator:
    """Wraps a collator: strips the cache columns, collates the rest, then pads the cache to ``[B, T, k]``.

    Padding positions get id 0 and log-probability 0; they carry label -100 and are never read.
    """

    def __init__(self, base, temperature: float, vocab: int) -> None:
        self.base, self.temperature, self.vocab = base, temperature, vocab

    def __call__(self, examples: Sequence[dict]) -> dict:
        if IDS not in examples[0]:
            raise ValueError(
                "a batch without teacher-cache columns reached the offline collator; with an offline cache the "
                "evaluation dataset must be a teacher cache too (cache_teacher_topk)"
            )
        stripped = [{c: v for c, v in ex.items() if c not in CACHE_COLUMNS} for ex in examples]
        batch = self.base(stripped)
        width = batch["input_ids"].shape[1]
        k = len(examples[0][IDS][0])
        ids = torch.zeros(len(examples), width, k, dtype=torch.long)
        logp = torch.zeros(len(examples), width, k)
        tail = torch.zeros(len(examples), width)
        for i, ex in enumerate(examples):
            self._check(ex)
            n = min(len(ex["input_ids"]), len(ex[IDS]), width)
            ids[i, :n] = torch.as_tensor(ex[IDS][:n], dtype=torch.long)
            logp[i, :n] = torch.as_tensor(ex[LOGPROBS][:n], dtype=torch.float32)
            tail[i, :n] = torch.as_tensor(ex[TAIL][:n], dtype=torch.float32)
        if int(ids.max()) >= self.vocab:
            raise ValueError(
                f"teacher cache holds token id {int(ids.max())} >= the compared vocabulary {self.vocab}"
            )
        return {**batch, IDS: ids, LOGPROBS: logp, TAIL: tail}

    def _check(self, ex: dict) -> None:
        if abs(float(ex[TEMPERATURE]) - self.temperature) > 1e-6:
            raise ValueError(
                f"the teacher cache was written at temperature {ex[TEMPERATURE]} but DistillationConfig.temperature="
                f"{self.temperature}; rebuild the cache or use the same temperature"
            )


def cache_main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry: ``python -m hf_compress.distill.teacher_cache --teacher DIR --dataset FILE --out DIR``."""
    parser = argparse.ArgumentParser(
        description="Store a teacher's top-k log-probabilities for offline distillation"
    )
    parser.add_argument("--teacher", required=True, help="teacher model folder (from_pretrained)")
    parser.add_argument(
        "--dataset", required=True, help="local file (.txt/.jsonl/.json/.csv/.tsv/.parquet) or saved dataset"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--max_rows", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .cli_entry import load_local_dataset

    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=getattr(torch, args.dtype))
    data = load_local_dataset(args.dataset, max_rows=args.max_rows)
    return cache_teacher_topk(
        teacher,
        data,
        args.out,
        args.k,
        tokenizer,
        args.temperature,
        args.max_length,
        args.batch_size,
        dataset_text_field=args.text_field,
    )


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    cache_main()
