"""Data loading, the tokenizer round-trip check and token windows (tiny tokenizers built in code)."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_compress.calibration import (
    CalibrationSet,
    NoTextError,
    TokenizerRoundTripError,
    TooShortError,
    calibration_windows,
    check_tokenizer_roundtrip,
    evaluation_plan,
    evaluation_windows,
    load_texts,
    tokenize_stream,
    window_starts,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step, they say.",
    "Robert is an English film , television and theatre actor @-@ he starred in 2004 .",
    "Prices rose 3.5% in May; analysts didn't expect that!",
] * 8


def byte_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A lossless byte-level BPE tokenizer trained on CORPUS (vocab ~300)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def space_dropping_tokenizer() -> PreTrainedTokenizerFast:
    """Broken like a 4.57 GGUF tokenizer folder read by transformers 5.x: decoding drops every space."""
    words = {w for text in CORPUS for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)}
    vocab = {w: i for i, w in enumerate(["[UNK]", *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def bert_like_tokenizer() -> PreTrainedTokenizerFast:
    """Lossy by design (lower-cases, spaces punctuation, unknown chars -> [UNK]) but not broken."""
    pre = pre_tokenizers.BertPreTokenizer()
    words = {w for text in CORPUS for w, _ in pre.pre_tokenize_str(text.lower())}
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", *sorted(words)])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return byte_bpe_tokenizer()


# ------------------------------------------------------------------------------------- loaders


def test_list_and_tuple(tmp_path):
    assert load_texts(["a", "b"]) == ["a", "b"]
    assert load_texts(("a", "b", "c"), max_texts=2) == ["a", "b"]
    assert load_texts([{"q": "x", "a": "y"}], text_field=["q", "a"]) == ["x\ny"]
    with pytest.raises(TypeError, match="source\\[1\\]"):
        load_texts(["a", 3])


def test_txt_is_one_intact_text(tmp_path):
    body = " \n = Title = \n \n First line .\n\n\nSecond <unk> line .\n"
    (tmp_path / "a.txt").write_text(body, encoding="utf-8")
    assert load_texts(tmp_path / "a.txt") == [body]
    assert load_texts(str(tmp_path / "a.txt")) == [body]


def test_jsonl_field_list_and_callable(tmp_path):
    path = tmp_path / "gsm.jsonl"
    rows = [{"question": "1+1?", "answer": "2\n#### 2"}, {"question": "2+2?", "answer": "4\n#### 4"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert load_texts(path, text_field="question") == ["1+1?", "2+2?"]
    assert load_texts(path, text_field=["question", "answer"])[0] == "1+1?\n2\n#### 2"
    fmt = lambda r: f"Q: {r['question']} A: {r['answer'].split('####')[-1].strip()}"  # noqa: E731
    assert load_texts(path, text_field=fmt) == ["Q: 1+1? A: 2", "Q: 2+2? A: 4"]
    with pytest.raises(ValueError, match=r"'text' not found.*fields present: question, answer"):
        load_texts(path)


def test_jsonl_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_texts(path)


def test_csv_by_name(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('id,body\n1,"hello, world"\n2,second\n', encoding="utf-8")
    assert load_texts(path, text_field="body") == ["hello, world", "second"]
    with pytest.raises(ValueError, match="fields present: id, body"):
        load_texts(path, text_field="text")


def test_tsv_with_header_by_name_and_index(tmp_path):
    path = tmp_path / "sst.tsv"
    path.write_text(
        'sentence\tlabel\nit \'s a "charming" journey . \t1\nbleak and desperate \t0\n', encoding="utf-8"
    )
    by_name = load_texts(path, text_field="sentence")
    assert by_name == ['it \'s a "charming" journey . ', "bleak and desperate "]
    assert load_texts(path, text_field=0) == by_name  # header detected and skipped


def test_headerless_tsv_by_index(tmp_path):
    path = tmp_path / "raw.tsv"
    path.write_text("first sentence here\t1\nsecond one\t0\nthird\t1\n", encoding="utf-8")
    assert load_texts(path, text_field=0) == ["first sentence here", "second one", "third"]
    with pytest.raises(ValueError, match="column 5"):
        load_texts(path, text_field=5)


def test_parquet(tmp_path):

    pq.write_table(pa.table({"text": ["p1", "p2"], "n": [1, 2]}), tmp_path / "d.parquet")
    assert load_texts(tmp_path / "d.parquet") == ["p1", "p2"]
    assert load_texts(tmp_path / "d.parquet", text_field=lambda r: f"{r['text']}:{r['n']}") == [
        "p1:1",
        "p2:2",
    ]
    with pytest.raises(ValueError, match="fields present: text, n"):
        load_texts(tmp_path / "d.parquet", text_field="body")


def test_folder_reads_supported_files_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "first"}\n', encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert load_texts(tmp_path) == ["first", "second"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no data files"):
        load_texts(tmp_path / "empty")


def test_datasets_objects():
    ds = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]})
    assert load_texts(ds) == ["x", "y"]
    assert load_texts(ds, text_field=lambda r: f"{r['text']}{r['label']}") == ["x0", "y1"]
    with pytest.raises(ValueError, match="fields present: text, label"):
        load_texts(ds, text_field="sentence")
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([1])})
    assert load_texts(dd, split="test") == ["y"]
    with pytest.raises(ValueError, match="available splits: train, test"):
        load_texts(dd)


def test_hub_name_goes_to_load_dataset(monkeypatch):
    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"text": ["hub text"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_texts("Salesforce/wikitext", config_name="wikitext-2-raw-v1", split="test") == ["hub text"]
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", "test")]


def test_hub_failure_is_explained(monkeypatch):

    def fail(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(ValueError, match="could not load Hub dataset 'some/name'.*offline"):
        load_texts("some/name", split="train")


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_texts(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_texts(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.xml").write_text("<a/>", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'\.xml'.*allowed: \.txt, \.jsonl, \.csv, \.tsv, \.parquet"):
        load_texts(tmp_path / "d.xml")


def test_no_usable_text(tmp_path):
    with pytest.raises(NoTextError, match="all empty"):
        load_texts(["", "  \n"])
    (tmp_path / "e.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(NoTextError):
        load_texts(tmp_path / "e.txt")
    with pytest.raises(ValueError, match="max_texts"):
        load_texts(["a"], max_texts=0)


def test_real_files_load(shared_data):
    assert len(load_texts(shared_data / "wikitext-2" / "test.txt")) == 1
    assert len(load_texts(shared_data / "sst2" / "dev.tsv", text_field="sentence")) == 872
    assert len(load_texts(shared_data / "sst2" / "dev.tsv", text_field=0)) == 872
    gsm = load_texts(shared_data / "gsm8k" / "test.jsonl", text_field=["question", "answer"], max_texts=5)
    assert len(gsm) == 5 and "####" in gsm[0]


# ---------------------------------------------------------------------------- round-trip check


def test_roundtrip_passes_on_lossless_tokenizer(tok):
    check_tokenizer_roundtrip(tok, CORPUS)
    check_tokenizer_roundtrip(tok, ["".join(CORPUS) * 20], n_samples=8, max_chars=200)


def test_roundtrip_detects_dropped_spaces():
    broken = space_dropping_tokenizer()
    assert (
        broken.decode(broken("over the lazy dog", add_special_tokens=False)["input_ids"]) == "overthelazydog"
    )
    with pytest.raises(TokenizerRoundTripError, match="overthelazydog|thelazydog"):
        check_tokenizer_roundtrip(broken, ["The quick brown fox jumps over the lazy dog."])


def test_roundtrip_tolerates_lossy_by_design_tokenizer():
    bert = bert_like_tokenizer()
    check_tokenizer_roundtrip(bert, ["Robert is an English Film, television and theatre actor \u2603 ."])
    check_tokenizer_roundtrip(bert, CORPUS)


def test_roundtrip_catches_changed_words():
    bert = bert_like_tokenizer()  # "zebra" is not in its vocab -> [UNK] may stand for it, but not drop it
    check_tokenizer_roundtrip(bert, ["the zebra jumps"])
    with pytest.raises(TokenizerRoundTripError, match="6 of 8 tokens of a sample are unknown"):
        check_tokenizer_roundtrip(bert, ["the zebra gazelle okapi giraffe lemur ibex jumps"])
    with pytest.raises(TokenizerRoundTripError):
        check_tokenizer_roundtrip(space_dropping_tokenizer(), ["the quick fox"])


def test_roundtrip_sample_is_deterministic_and_bounded(tok, monkeypatch):
    seen = []
    original = tok.__class__.__call__

    def spy(self, text, *args, **kwargs):
        seen.append(text)
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(tok.__class__, "__call__", spy)
    long = [" ".join(f"line {i} of the quick brown fox." for i in range(400))]
    check_tokenizer_roundtrip(tok, long, n_samples=5, max_chars=300)
    first = list(seen)
    seen.clear()
    check_tokenizer_roundtrip(tok, long, n_samples=5, max_chars=300)
    assert seen == first and len(first) == 5 and all(len(s) <= 300 for s in first)


# ------------------------------------------------------------------------------------- windows


def test_tokenize_stream_joins_with_blank_line(tok):
    stream = tokenize_stream(tok, ["first text", "second"])
    assert stream.dtype == torch.long and stream.ndim == 1
    assert stream.tolist() == tok("first text\n\nsecond", add_special_tokens=False)["input_ids"]
    with_bos = tokenize_stream(tok, ["first text", "second"], add_bos=True)
    assert with_bos[0].item() == tok.bos_token_id and with_bos[1:].tolist() == stream.tolist()


def test_calibration_windows_deterministic(tok):
    a = calibration_windows(tok, CORPUS, seqlen=16, n_windows=6, seed=0)
    b = calibration_windows(tok, CORPUS, seqlen=16, n_windows=6, seed=0)
    c = calibration_windows(tok, CORPUS, seqlen=16, n_windows=6, seed=1)
    assert a.input_ids.shape == (6, 16) and a.input_ids.dtype == torch.long
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert torch.equal(a.attention_mask, torch.ones_like(a.input_ids))
    assert (a.seqlen, a.n_windows, a.seed, a.n_tokens) == (16, 6, 0, tokenize_stream(tok, CORPUS).numel())


def test_calibration_windows_are_stream_slices(tok):
    stream = tokenize_stream(tok, CORPUS).tolist()
    cal = calibration_windows(tok, CORPUS, seqlen=12, n_windows=20, seed=3)
    slices = {tuple(stream[s : s + 12]) for s in range(len(stream) - 11)}
    assert all(tuple(row) in slices for row in cal.input_ids.tolist())


def test_calibration_add_bos(tok):
    cal = calibration_windows(tok, CORPUS, seqlen=8, n_windows=4, add_bos=True)
    assert cal.input_ids.shape == (4, 8) and (cal.input_ids[:, 0] == tok.bos_token_id).all()
    assert (cal.input_ids[:, 1:] != tok.bos_token_id).all()


def test_too_short_and_bad_sizes(tok):
    n = tokenize_stream(tok, ["short text"]).numel()
    with pytest.raises(TooShortError, match=rf"has {n} tokens; one window of seqlen=64 needs 64"):
        calibration_windows(tok, ["short text"], seqlen=64, n_windows=2)
    with pytest.raises(ValueError, match="n_windows=0"):
        calibration_windows(tok, CORPUS, seqlen=8, n_windows=0)
    with pytest.raises(ValueError, match="seqlen=-1"):
        calibration_windows(tok, CORPUS, seqlen=-1)
    with pytest.raises(TooShortError, match="needs 64"):
        evaluation_windows(tok, ["short text"], seqlen=64)


def test_calibration_refuses_broken_tokenizer():
    with pytest.raises(TokenizerRoundTripError):
        calibration_windows(space_dropping_tokenizer(), CORPUS, seqlen=4, n_windows=2)


def test_pretokenized_tensor_and_list(tok):
    ids = torch.arange(24).reshape(3, 8)
    cal = calibration_windows(tok, ids)
    assert torch.equal(cal.input_ids, ids) and cal.attention_mask.all() and cal.seed is None
    cal2 = calibration_windows(tok, [ids[0], ids[1:]])
    assert torch.equal(cal2.input_ids, ids)
    assert calibration_windows(tok, cal) is cal


def test_padding_is_masked_and_travels_with_batches(tok):
    rows = [
        {"input_ids": [5, 6, 7, 8]},
        {"input_ids": [9, 10], "attention_mask": [1, 1]},
        {"input_ids": torch.tensor([11, 12, 13, 0]), "attention_mask": torch.tensor([1, 1, 1, 0])},
    ]
    cal = calibration_windows(tok, rows)
    assert cal.input_ids.shape == (3, 4)
    assert cal.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert cal.input_ids[1, 2:].tolist() == [tok.pad_token_id] * 2
    assert cal.n_real_tokens == 9 == cal.n_tokens
    batches = list(cal.batches(batch_size=2))
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1]
    assert torch.equal(torch.cat([b["attention_mask"] for b in batches]), cal.attention_mask)
    real = torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in batches])
    assert real.tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13]


def test_pretokenized_errors(tok):
    with pytest.raises(ValueError, match="no real tokens"):
        calibration_windows(tok, [{"input_ids": [1, 2], "attention_mask": [0, 0]}])
    with pytest.raises(ValueError, match="attention_mask has 1 entries"):
        calibration_windows(tok, [{"input_ids": [1, 2], "attention_mask": [1]}])
    with pytest.raises(TypeError, match="integers"):
        calibration_windows(tok, torch.rand(2, 4))
    with pytest.raises(ValueError, match="0 \\(padding\\) and 1"):
        CalibrationSet(torch.zeros(1, 2, dtype=torch.long), torch.full((1, 2), 2), "x", 2, 1, None, 2)


def test_pretokenized_dataset_column(tok):
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]]})
    cal = calibration_windows(tok, ds)
    assert cal.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_evaluation_windows_non_overlapping_from_start(tok):
    stream = tokenize_stream(tok, CORPUS)
    windows = evaluation_windows(tok, CORPUS, seqlen=16)
    n = stream.numel() // 16
    assert windows.shape == (n, 16)
    assert torch.equal(windows.reshape(-1), stream[: n * 16])
    assert torch.equal(evaluation_windows(tok, CORPUS, seqlen=16, max_windows=3), windows[:3])


def test_evaluation_windows_bos_and_stride(tok):
    stream = tokenize_stream(tok, CORPUS)
    bos = evaluation_windows(tok, CORPUS, seqlen=9, add_bos=True, max_windows=4)
    assert (bos[:, 0] == tok.bos_token_id).all()
    assert torch.equal(bos[:, 1:].reshape(-1), stream[:32])
    strided = evaluation_windows(tok, CORPUS, seqlen=8, stride=4, max_windows=3)
    assert torch.equal(strided[1], stream[4:12])
    assert window_starts(20, 8, 4) == [0, 4, 8, 12]
    assert window_starts(20, 8, 8, max_windows=1) == [0]


def test_evaluation_plan_scores_each_token_at_most_once(tok):
    stream = tokenize_stream(tok, CORPUS)
    for stride, bos in [(None, False), (5, False), (3, True), (None, True)]:
        ids, labels, n = evaluation_plan(tok, CORPUS, seqlen=8, stride=stride, add_bos=bos, max_windows=6)
        assert n == stream.numel() and (labels[:, 0] == -100).all()
        length = 8 - bos
        starts = window_starts(n, length, stride or length, 6)
        scored = []
        for row, s in enumerate(starts):
            scored += [s + p - bos for p in range(8) if labels[row, p] != -100]
            kept = labels[row] != -100
            assert torch.equal(labels[row][kept], ids[row][kept])
        # never twice; without BOS a window's first token is only scored if an earlier window covers it
        unscored = (
            set() if bos else {s for i, s in enumerate(starts) if i == 0 or s >= starts[i - 1] + length}
        )
        assert scored == [t for t in range(starts[-1] + length) if t not in unscored]
