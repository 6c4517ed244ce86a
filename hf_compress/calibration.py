"""Calibration and evaluation data: texts from files or the Hub, a tokenizer check, token windows.

Protocol (the pruning papers': SparseGPT, Frantar & Alistarh 2023; Wanda, Sun et al. 2024):

* texts are joined with ``"\\n\\n"`` and tokenized ONCE as one stream, with no special tokens;
* calibration takes ``n_windows`` windows of ``seqlen`` tokens at random start offsets drawn from a
  seeded ``torch.Generator`` (windows may overlap, as in the papers' C4 sampling);
* evaluation takes non-overlapping windows (``stride == seqlen``) from the start of the stream;
  the tail shorter than one window is dropped.

BOS: the stream carries no special tokens. With ``add_bos=True`` every *window* starts with the
tokenizer's BOS followed by ``seqlen - 1`` stream tokens, so all windows are conditioned alike and
a window stays ``seqlen`` long. (``tokenize_stream(add_bos=True)`` instead puts one BOS at the
start of the whole stream, which is what a BOS-adding tokenizer does on the joined text.)

Padding never reaches statistics: every batch travels with its ``attention_mask`` (0 = padding).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv", ".parquet")
JOIN = "\n\n"
IGNORE_INDEX = -100
MAX_UNKNOWN = 0.05  # share of unknown tokens the round-trip check tolerates

TextField = str | int | Sequence[str] | Callable[[Mapping[str, Any]], str]


class NoTextError(ValueError):
    """The data source holds no usable (non-empty) text."""


class TokenizerRoundTripError(ValueError):
    """``decode(encode(text))`` does not give the text back: the tokenizer is broken for this data."""


class TooShortError(ValueError):
    """The token stream is shorter than one window."""


# ----------------------------------------------------------------------------------------- loading


def load_texts(
    source: Any,
    *,
    split: str | None = None,
    text_field: TextField = "text",
    config_name: str | None = None,
    max_texts: int | None = None,
) -> list[str]:
    """Texts from a list of strings, a ``datasets.Dataset``, a local file or folder, or a Hub name.

    Local files: ``.txt`` (the whole file is ONE text, kept intact), ``.jsonl`` (one row per line),
    ``.csv``/``.tsv`` (a header row for a named column; an int ``text_field`` picks a column by
    index and the header is detected), ``.parquet``. A folder reads its files of those kinds in
    sorted order. Any other string is a Hub dataset: ``datasets.load_dataset(source, config_name,
    split=split)``.

    ``text_field`` is a column name, a column index (csv/tsv), a list of names (joined with a new
    line: e.g. gsm8k's ``["question", "answer"]``) or a callable ``row -> str``.
    """
    if max_texts is not None and max_texts < 1:
        raise ValueError(f"max_texts={max_texts!r} must be None or >= 1")
    name = source_name(source, split=split, config_name=config_name)
    texts = list(itertools.islice(_iter_texts(source, split, text_field, config_name), max_texts))
    if not any(t.strip() for t in texts):
        raise NoTextError(f"no usable text in {name}: {len(texts)} text(s), all empty")
    return texts


def source_name(source: Any, *, split: str | None = None, config_name: str | None = None) -> str:
    """A short human description of a data source, for reports and errors."""
    if isinstance(source, (str, Path)):
        parts = [str(source)] + [f"{k}={v}" for k, v in (("config", config_name), ("split", split)) if v]
        return parts[0] if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})"
    if isinstance(source, (list, tuple)):
        return f"{type(source).__name__} of {len(source)} item(s)"
    if isinstance(source, torch.Tensor):
        return f"token tensor {list(source.shape)}"
    info = getattr(source, "info", None)
    ds_name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    split = split or getattr(source, "split", None)
    return f"{type(source).__name__}({ds_name or 'in memory'}{f', split={split}' if split else ''})"


def _iter_texts(
    source: Any, split: str | None, text_field: TextField, config_name: str | None
) -> Iterator[str]:
    if isinstance(source, (list, tuple)):
        for i, item in enumerate(source):
            if isinstance(item, Mapping):
                yield _row_text(item, text_field, f"source[{i}]")
            elif isinstance(item, str):
                yield item
            else:
                raise TypeError(
                    f"source[{i}] is a {type(item).__name__}; a list source holds str or dict rows"
                )
        return
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.exists():
            yield from _iter_path(path, text_field)
            return
        if isinstance(source, Path) or _looks_like_path(str(source)):
            raise FileNotFoundError(f"data file not found: {str(source)!r}")
        source = _load_hub(str(source), config_name, split)
    yield from _iter_dataset(source, split, text_field)


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.lower().endswith(SUFFIXES) or "\\" in text


def _load_hub(name: str, config_name: str | None, split: str | None):
    import datasets

    try:
        return datasets.load_dataset(name, config_name, split=split)
    except Exception as err:  # the Hub's errors vary by version and by network state
        raise ValueError(
            f"could not load Hub dataset {name!r} (config={config_name!r}, split={split!r}): {err}. "
            f"Local files need an existing path ending in one of {', '.join(SUFFIXES)}"
        ) from err


def _iter_dataset(ds: Any, split: str | None, text_field: TextField) -> Iterator[str]:
    if _is_dataset_dict(ds):
        splits = list(ds.keys())
        if split not in splits:
            raise ValueError(f"split={split!r} is not in the dataset; available splits: {', '.join(splits)}")
        ds = ds[split]
    if not hasattr(ds, "column_names"):
        raise TypeError(
            f"unsupported data source of type {type(ds).__name__}: give a list of str, a datasets.Dataset, "
            f"a local file/folder ({', '.join(SUFFIXES)}) or a Hub dataset name"
        )
    if ds.column_names is not None:  # a streaming dataset may not know its columns
        _check_fields(text_field, ds.column_names, source_name(ds))
    if isinstance(text_field, str) and hasattr(ds, "__len__"):  # fast path: one column
        yield from _checked(ds[text_field], text_field)
        return
    for i, row in enumerate(ds):
        yield _row_text(row, text_field, f"row {i}")


def _is_dataset_dict(ds: Any) -> bool:
    mod = sys.modules.get("datasets")
    return mod is not None and isinstance(ds, (mod.DatasetDict, mod.IterableDatasetDict))


def _iter_path(path: Path, text_field: TextField) -> Iterator[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no data files ({', '.join(SUFFIXES)}) in folder {str(path)!r}")
        for file in files:
            yield from _iter_path(file, text_field)
        return
    readers = {".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_csv, ".tsv": _read_csv}
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(path, text_field)
    elif suffix in readers:
        yield from readers[suffix](path, text_field)
    else:
        raise ValueError(
            f"unsupported data file extension {suffix!r} ({path}); allowed: {', '.join(SUFFIXES)}"
        )


def _read_txt(path: Path, text_field: TextField) -> Iterator[str]:
    yield path.read_text(encoding="utf-8")


def _read_jsonl(path: Path, text_field: TextField) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err})") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: a JSON object is needed, got {type(row).__name__}")
            yield _row_text(row, text_field, f"{path}:{lineno}")


def _read_csv(path: Path, text_field: TextField) -> Iterator[str]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL  # GLUE tsv files are unquoted
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as f:
        if isinstance(text_field, int):
            sample = f.read(65536)
            f.seek(0)
            rows = csv.reader(f, delimiter=delimiter, quoting=quoting)
            if sample and _has_header(sample):
                next(rows, None)
            for lineno, row in enumerate(rows, 1):
                if text_field >= len(row) or text_field < -len(row):
                    raise ValueError(
                        f"{path} row {lineno}: column {text_field} asked, row has {len(row)} column(s)"
                    )
                yield row[text_field]
            return
        reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
        _check_fields(text_field, reader.fieldnames or [], str(path))
        for lineno, row in enumerate(reader, 2):
            yield _row_text(row, text_field, f"{path}:{lineno}")


def _has_header(sample: str) -> bool:
    try:
        return csv.Sniffer().has_header(sample)
    except csv.Error:
        return False


def _read_parquet(path: Path, text_field: TextField) -> Iterator[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    _check_fields(text_field, table.column_names, str(path))
    if isinstance(text_field, str):
        yield from _checked(table.column(text_field).to_pylist(), text_field)
        return
    for i, row in enumerate(table.to_pylist()):
        yield _row_text(row, text_field, f"{path} row {i}")


def _check_fields(text_field: TextField, present: Sequence[str], where: str) -> None:
    if callable(text_field):
        return
    if isinstance(text_field, int):
        raise ValueError(f"text_field={text_field!r}: a column index is only allowed for .csv/.tsv ({where})")
    wanted = [text_field] if isinstance(text_field, str) else list(text_field)
    missing = [f for f in wanted if f not in present]
    if missing:
        raise ValueError(
            f"text_field {missing[0]!r} not found in {where}; fields present: {', '.join(map(str, present))}"
        )


def _row_text(row: Mapping[str, Any], text_field: TextField, where: str) -> str:
    if callable(text_field):
        text = text_field(row)
        if not isinstance(text, str):
            raise TypeError(f"{where}: the text_field callable returned {type(text).__name__}, not str")
        return text
    fields = [text_field] if isinstance(text_field, (str, int)) else list(text_field)
    for f in fields:
        if f not in row:
            raise ValueError(
                f"text_field {f!r} not found at {where}; fields present: {', '.join(map(str, row))}"
            )
    return "\n".join(_as_text(row[f], f, where) for f in fields)


def _checked(values: Iterable[Any], field: str) -> Iterator[str]:
    for i, value in enumerate(values):
        yield _as_text(value, field, f"row {i}")


def _as_text(value: Any, field: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{where}: field {field!r} holds {type(value).__name__}, not text")
    return value


# ------------------------------------------------------------------------------ tokenizer check


def check_tokenizer_roundtrip(
    tokenizer: Any, texts: Sequence[str], *, n_samples: int = 8, max_chars: int = 2000
) -> None:
    """Refuse a tokenizer for which ``decode(encode(text))`` is not the text, on a sample of ``texts``.

    ``n_samples`` snippets of up to ``max_chars`` characters are cut at evenly spaced offsets of the
    joined texts (deterministic). Encoding adds no special tokens, so decoding keeps them: a literal
    special-token string in the data (``<unk>`` in the tokenized WikiText release) comes back as
    itself. Comparison is after NFKC, lower-casing/accent-stripping where the tokenizer itself does
    that (BERT uncased), whitespace collapse, and ignoring spaces next to punctuation (WordPiece
    decoding); spaces between two word characters must survive. An unknown token stands for one
    word, and at most 5% of the tokens may be unknown.

    Raises:
        TokenizerRoundTripError: naming the first differing snippet (e.g. ``over the lazy dog``
            coming back as ``overthelazydog``).
    """
    folds = _tokenizer_folds(tokenizer)
    for snippet in _sample_snippets(texts, n_samples, max_chars):
        problem = _roundtrip_problem(tokenizer, snippet, folds)
        if problem:
            raise TokenizerRoundTripError(
                f"tokenizer {_tokenizer_name(tokenizer)} does not give the text back: {problem}. "
                f"A tokenizer folder written by another transformers version (e.g. a 4.57 GGUF "
                f"conversion read by 5.x) is a known cause: re-save the tokenizer with this "
                f"transformers version or load the original one."
            )


def _roundtrip_problem(tokenizer: Any, snippet: str, folds: tuple[bool, bool]) -> str | None:
    """What is wrong with ``decode(encode(snippet))``, or None."""
    ids = tokenizer(snippet, add_special_tokens=False, verbose=False)["input_ids"]
    unk, unk_id = getattr(tokenizer, "unk_token", None), getattr(tokenizer, "unk_token_id", None)
    n_unk = ids.count(unk_id) - (snippet.count(unk) if unk else 0) if unk_id is not None else 0
    if n_unk > max(2, MAX_UNKNOWN * len(ids)):
        return f"{n_unk} of {len(ids)} tokens of a sample are unknown ({unk!r})"
    decoded = tokenizer.decode(ids, skip_special_tokens=False)
    want = _normalize(snippet, *folds)
    pieces = [_normalize(p, *folds) for p in (decoded.split(unk) if unk else [decoded])]
    if re.fullmatch(" ?[^ ]*? ?".join(map(re.escape, pieces)), want, flags=re.DOTALL):
        return None
    got = "\u2047".join(pieces)
    i = next((k for k, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
    lo = max(0, i - 30)
    return (
        f"decode(encode(text)) differs at character {i} of a sample (after normalization): "
        f"expected {want[lo : i + 50]!r}, got {got[lo : i + 50]!r}"
    )


def _tokenizer_name(tokenizer: Any) -> str:
    return f"{getattr(tokenizer, 'name_or_path', '') or '?'} ({type(tokenizer).__name__})"


def _tokenizer_folds(tokenizer: Any) -> tuple[bool, bool]:
    """Whether the tokenizer's own normalizer lower-cases and strips accents (BERT uncased)."""
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    if normalizer is not None:
        return normalizer.normalize_str("A") == "a", normalizer.normalize_str("\u00e9") == "e"
    lower = bool(getattr(tokenizer, "do_lower_case", False))
    return lower, lower


def _normalize(text: str, lowercase: bool, strip_accents: bool) -> str:
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"(?<=[^\w ]) | (?=[^\w ])", "", text)


def _sample_snippets(texts: Sequence[str], n_samples: int, max_chars: int) -> list[str]:
    if n_samples < 1 or max_chars < 1:
        raise ValueError(f"n_samples={n_samples!r} and max_chars={max_chars!r} must be >= 1")
    joined = JOIN.join(t for t in texts if t.strip())
    snippets: list[str] = []
    for k in range(n_samples):
        start = k * len(joined) // n_samples
        if start:  # begin after a whitespace so no word is cut
            space = re.compile(r"\s").search(joined, start, start + max_chars)
            start = space.end() if space else start
        piece = joined[start : start + max_chars]
        cut = max(piece.rfind(" "), piece.rfind("\n"))
        piece = piece[:cut] if start + max_chars < len(joined) and cut > max_chars // 2 else piece
        if piece.strip() and piece not in snippets:
            snippets.append(piece)
    return snippets


# -------------------------------------------------------------------------------------- windows


def tokenize_stream(tokenizer: Any, texts: Sequence[str], add_bos: bool = False) -> torch.Tensor:
    """The token stream of ``"\\n\\n".join(texts)``: LongTensor ``[n_tokens]``, no special tokens.

    ``add_bos=True`` puts one BOS at the start of the stream (what a BOS-adding tokenizer does).
    """
    ids = tokenizer(JOIN.join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    if add_bos:
        ids = [_bos_id(tokenizer), *ids]
    return torch.tensor(ids, dtype=torch.long)


def _bos_id(tokenizer: Any) -> int:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise ValueError(f"add_bos=True but tokenizer {_tokenizer_name(tokenizer)} has no bos_token")
    return int(bos)


@dataclass
class CalibrationSet:
    """Calibration windows plus where they came from.

    Attributes:
        input_ids: LongTensor ``[n, seqlen]``.
        attention_mask: LongTensor ``[n, seqlen]``, 1 = real token, 0 = padding (never in statistics).
        source: human description of the data.
        seqlen, n_windows, seed: how the windows were drawn (``seed`` is None for given tokens).
        n_tokens: tokens in the stream the windows were drawn from (real tokens for given tokens).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    source: str
    seqlen: int
    n_windows: int
    seed: int | None
    n_tokens: int

    def __post_init__(self) -> None:
        if self.input_ids.ndim != 2 or self.input_ids.shape[0] < 1:
            raise ValueError(f"input_ids must be [n >= 1, seqlen], got shape {list(self.input_ids.shape)}")
        if self.attention_mask.shape != self.input_ids.shape:
            raise ValueError(
                f"attention_mask shape {list(self.attention_mask.shape)} != input_ids {list(self.input_ids.shape)}"
            )
        if ((self.attention_mask != 0) & (self.attention_mask != 1)).any():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def n_real_tokens(self) -> int:
        """Tokens that are not padding."""
        return int(self.attention_mask.sum())

    def batches(self, batch_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """``{"input_ids", "attention_mask"}`` batches of ``[<= batch_size, seqlen]``, in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        for i in range(0, len(self), batch_size):
            yield {
                "input_ids": self.input_ids[i : i + batch_size],
                "attention_mask": self.attention_mask[i : i + batch_size],
            }

    def provenance(self) -> dict[str, Any]:
        """Everything but the tensors (for reports)."""
        return {
            "source": self.source,
            "seqlen": self.seqlen,
            "n_windows": self.n_windows,
            "seed": self.seed,
            "n_tokens": self.n_tokens,
            "n_real_tokens": self.n_real_tokens,
        }


def calibration_windows(
    tokenizer: Any,
    source: Any,
    *,
    seqlen: int = 512,
    n_windows: int = 128,
    seed: int = 0,
    add_bos: bool = False,
    check_roundtrip: bool = True,
    **load_kw: Any,
) -> CalibrationSet:
    """``n_windows`` windows of ``seqlen`` tokens at seeded random offsets of the token stream.

    ``source`` is anything :func:`load_texts` reads (``load_kw`` goes there), or already-tokenized
    data used as given: a LongTensor ``[n, L]`` (or ``[L]``), a list of such tensors, a list of dicts
    with ``input_ids`` (+ optional ``attention_mask``), a ``datasets.Dataset`` with an ``input_ids``
    column, or a :class:`CalibrationSet`. Rows of different lengths are right-padded with mask 0.

    Raises:
        ValueError: ``seqlen`` or ``n_windows`` < 1; empty data. TooShortError: fewer tokens than one
        window (says how many there are and how many are needed). TokenizerRoundTripError.
    """
    if isinstance(source, CalibrationSet):
        return source
    _check_positive(seqlen=seqlen, n_windows=n_windows)
    if seqlen < 1 + add_bos:
        raise ValueError(f"seqlen={seqlen} leaves no room for text after the BOS token (add_bos=True)")
    if _is_pretokenized(source, load_kw.get("text_field", "text")):
        return _from_token_rows(source, tokenizer)
    name = source_name(source, split=load_kw.get("split"), config_name=load_kw.get("config_name"))
    texts = load_texts(source, **load_kw)
    if check_roundtrip:
        check_tokenizer_roundtrip(tokenizer, texts)
    stream = tokenize_stream(tokenizer, texts)
    length = seqlen - add_bos
    _check_long_enough(stream.numel(), length, seqlen, name)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - length + 1, (n_windows,), generator=gen)
    ids = torch.stack([stream[s : s + length] for s in starts.tolist()])
    ids = _prepend_bos(ids, tokenizer) if add_bos else ids
    logger.info(
        "calibration: %d windows x %d tokens from %s (%d tokens, seed %d)",
        n_windows,
        seqlen,
        name,
        stream.numel(),
        seed,
    )
    return CalibrationSet(ids, torch.ones_like(ids), name, seqlen, n_windows, seed, stream.numel())


def _check_positive(**values: int | None) -> None:
    for field, value in values.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{field}={value!r} must be an integer >= 1")


def _check_long_enough(n_tokens: int, length: int, seqlen: int, name: str) -> None:
    if n_tokens < length:
        raise TooShortError(
            f"{name} has {n_tokens} tokens; one window of seqlen={seqlen} needs {length}. "
            f"Give more text or a smaller seqlen."
        )


def _prepend_bos(ids: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    return torch.cat([torch.full((ids.shape[0], 1), _bos_id(tokenizer), dtype=ids.dtype), ids], dim=1)


def _is_pretokenized(source: Any, text_field: Any) -> bool:
    if isinstance(source, torch.Tensor):
        return True
    if isinstance(source, (list, tuple)) and source:
        first = source[0]
        return isinstance(first, torch.Tensor) or (isinstance(first, Mapping) and "input_ids" in first)
    columns = getattr(source, "column_names", None)
    return isinstance(columns, list) and "input_ids" in columns and text_field not in columns


def _from_token_rows(source: Any, tokenizer: Any) -> CalibrationSet:
    rows = list(_token_rows(source))
    if not rows:
        raise ValueError("calibration set is empty: no token rows given")
    width = max(ids.numel() for ids, _ in rows)
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    input_ids = torch.full((len(rows), width), 0 if pad is None else int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, m) in enumerate(rows):
        input_ids[i, : ids.numel()] = ids
        mask[i, : ids.numel()] = m
        if not m.any():
            raise ValueError(f"calibration row {i} has no real tokens (its attention_mask is all 0)")
    name = source_name(source)
    return CalibrationSet(input_ids, mask, name, width, len(rows), None, int(mask.sum()))


def _token_rows(source: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    items = [source] if isinstance(source, torch.Tensor) else source
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            if item.numel() == 0:
                raise ValueError(f"token tensor {i} has shape {list(item.shape)}: no tokens to calibrate on")
            ids = item.reshape(-1, item.shape[-1]) if item.ndim else item.reshape(1, 1)
            for row in ids:
                yield _row(row, None, i)
        elif isinstance(item, Mapping):
            if "input_ids" not in item:
                raise ValueError(
                    f"token row {i} has no 'input_ids'; keys present: {', '.join(map(str, item))}"
                )
            yield _row(item["input_ids"], item.get("attention_mask"), i)
        else:
            raise TypeError(f"token row {i} is a {type(item).__name__}; expected a LongTensor or a dict")


def _row(ids: Any, mask: Any, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.as_tensor(ids).reshape(-1)
    if ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"token row {i} holds {ids.dtype}; token ids must be integers")
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).reshape(-1).long()
    if mask.shape != ids.shape:
        raise ValueError(f"token row {i}: attention_mask has {mask.numel()} entries, input_ids {ids.numel()}")
    return ids.long(), mask


def window_starts(n_tokens: int, length: int, stride: int, max_windows: int | None = None) -> list[int]:
    """Start offsets ``0, stride, 2*stride, ...`` of the windows of ``length`` that fit in ``n_tokens``."""
    starts = list(range(0, n_tokens - length + 1, stride))
    return starts if max_windows is None else starts[:max_windows]


def evaluation_plan(
    tokenizer: Any,
    source: Any,
    *,
    seqlen: int,
    max_windows: int | None = None,
    stride: int | None = None,
    add_bos: bool = False,
    check_roundtrip: bool = True,
    **load_kw: Any,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Evaluation windows, their labels and the stream size: ``(ids [n, seqlen], labels [n, seqlen], n)``.

    ``labels`` follow the transformers convention (position ``p`` is predicted from ``p - 1``) and
    are ``-100`` where nothing is scored: position 0, the BOS, and tokens an overlapping window
    (``stride < seqlen - add_bos``) already scored. So every stream token is scored at most once.
    """
    _check_positive(seqlen=seqlen, max_windows=max_windows, stride=stride)
    length = seqlen - add_bos
    if length < 1 + (not add_bos):
        raise ValueError(f"seqlen={seqlen} is too short to predict any token (add_bos={add_bos})")
    name = source_name(source, split=load_kw.get("split"), config_name=load_kw.get("config_name"))
    texts = load_texts(source, **load_kw)
    if check_roundtrip:
        check_tokenizer_roundtrip(tokenizer, texts)
    stream = tokenize_stream(tokenizer, texts)
    _check_long_enough(stream.numel(), length, seqlen, name)
    starts = window_starts(stream.numel(), length, stride or length, max_windows)
    ids = torch.stack([stream[s : s + length] for s in starts])
    labels = ids.clone()
    scored_from = 0  # first stream index not yet scored
    for row, s in enumerate(starts):
        labels[row, : max(scored_from - s, 0)] = IGNORE_INDEX
        scored_from = s + length
    if add_bos:
        ids = _prepend_bos(ids, tokenizer)
        labels = torch.cat([torch.full_like(labels[:, :1], IGNORE_INDEX), labels], dim=1)
    labels[:, 0] = IGNORE_INDEX
    return ids, labels, stream.numel()


def evaluation_windows(
    tokenizer: Any,
    source: Any,
    *,
    seqlen: int,
    max_windows: int | None = None,
    stride: int | None = None,
    add_bos: bool = False,
    **load_kw: Any,
) -> torch.Tensor:
    """Windows from the start of the token stream: LongTensor ``[n, seqlen]``.

    ``stride`` defaults to the window's text length (``seqlen``, or ``seqlen - 1`` with a BOS):
    non-overlapping windows, the pruning papers' protocol. The tail shorter than a window is dropped.
    """
    ids, _, _ = evaluation_plan(
        tokenizer, source, seqlen=seqlen, max_windows=max_windows, stride=stride, add_bos=add_bos, **load_kw
    )
    return ids
