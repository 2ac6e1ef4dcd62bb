"""Datasets: a source string -> train/val/test token streams, tokenized once and cached.

    ds = load_dataset("corpus:sotu")                       # bytes tokenizer, vocab 256
    ds = load_dataset("synthetic:dyck:k=2,depth=8", "bytes")
    ds = load_dataset("text:~/books/*.txt", "bpe:4096")
    x, y = ds.get_batch("train", batch_size=32, seq_len=256, step=1000)
    print(ds.bits_per_byte(1.2), ds.optimal_loss)

Sources (options after a last `:` as `name=value,...`; every option has a default):

    synthetic:dyck[:k=4,depth=16,p=0.45,chars=2000000,seed=0,doc=1000]   see synthetic.py
    synthetic:pcfg[:depth=5,branching=3,symbols=4,rules=3,chars=2000000,seed=0]
    text:PATH      a UTF-8 file, a folder (every non-hidden file below it) or a glob. Each file
                   is split into documents on runs of 2+ blank lines (chapters, in most books),
                   so a single file still gives a train and a val split.
    tokens:PATH[:vocab=N,dtype=uint16,bytes_per_token=B]   a nanoGPT .bin or a .npy of token
                   ids. A raw stream has no documents: train is its first part, then val
                   (val_fraction of it), then test (test_fraction). vocab defaults to max id + 1;
                   bytes_per_token to NaN.
    corpus:sotu    a ~1.6 MB sample of US State of the Union addresses shipped in the package.
    corpus:prose   SOTU + Brown + Wikipedia leads (~22 MB), after `spiralsearch data fetch prose`.

Text sources are split into train, val and test by document (a seeded shuffle picks the test
documents, then the val ones; each split keeps the original order; test_fraction=0, the
default here, makes no test split), joined (by "\\n\\n" for text, nothing for
Dyck, "\\n" ends each PCFG sentence) and tokenized with `bytes` (UTF-8 bytes, vocab 256) or
`bpe:N` (byte-level BPE with vocab N, trained on the train split). The token files live in
$SPIRALSEARCH_CACHE (default ~/.cache/spiralsearch) under a hash of the content, tokenizer,
fractions and seed, and are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spiralsearch.atomic import atomic_dir, atomic_write_text
from spiralsearch.data import synthetic
from spiralsearch.data.sources import (
    Corpus,
    DataError,
    Source,
    cache_root,
    parse_source,
    resolve,
    split_by_document,
    typed_options,
)

__all__ = ["DataError", "Dataset", "as_batch", "bits_per_byte", "cache_root", "entropy_warning",
           "fetch_prose", "load_dataset", "parse_source", "unigram_entropy"]

FORMAT_VERSION = 2  # bump when the cached layout or the splitting rules change
SPLITS = ("train", "val", "test")
_ENTROPY_MAX_TOKENS = 1 << 27  # unigram entropy of a huge tokens: file uses its first 134M


def bits_per_byte(loss: float, bytes_per_token: float) -> float:
    """Convert a loss in nats/token to bits per UTF-8 byte."""
    return loss / (math.log(2) * bytes_per_token)


def fetch_prose(cache_dir: str | Path | None = None) -> Path:
    """Download and verify corpus:prose into the cache (network); returns its folder."""
    from spiralsearch.data.corpora import fetch_prose as fetch

    return fetch(cache_dir)


# --- tokenizers ------------------------------------------------------------------------------


class ByteTokenizer:
    """UTF-8 bytes: ids 0..255."""

    vocab_size = 256

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.frombuffer("".join(texts).encode("utf-8"), dtype=np.uint8).copy()

    def decode(self, ids) -> str:
        return bytes(np.asarray(ids, dtype=np.uint8)).decode("utf-8", errors="replace")


class BPETokenizer:
    """A `tokenizers` byte-level BPE; vocab_size is the N asked for (the trained vocab can be
    smaller on a tiny corpus; ids stay below N)."""

    def __init__(self, tok, vocab_size: int):
        self.tok, self.vocab_size = tok, vocab_size

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok, vocab_size)

    @classmethod
    def load(cls, path: Path, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), vocab_size)

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.tok.to_str())

    def encode(self, texts: list[str]) -> np.ndarray:
        encs = self.tok.encode_batch(texts, add_special_tokens=False)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encs] or [[]])

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


def _bpe_size(tokenizer: str) -> int | None:
    """None for 'bytes', N for 'bpe:N'."""
    if tokenizer == "bytes":
        return None
    kind, _, n = tokenizer.partition(":")
    if kind != "bpe" or not n.isdigit():
        raise DataError(f"unknown tokenizer {tokenizer!r} (expected 'bytes' or 'bpe:N')")
    if int(n) < 256:
        raise DataError(f"tokenizer {tokenizer!r}: N must be >= 256 (the byte alphabet)")
    return int(n)


def _token_dtype(vocab_size: int) -> str:
    return "uint8" if vocab_size <= 256 else "uint16" if vocab_size <= 65536 else "uint32"


# --- cache -----------------------------------------------------------------------------------


def _key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _write_tokens(path: Path, ids: np.ndarray) -> None:
    # its own function so tests can make a write fail (or spy on rewrites)
    ids.tofile(path)


def unigram_entropy(ids: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats/token) of the token frequencies of `ids` (ids < vocab_size): the loss
    of a model that predicts every token from the frequencies alone. Counted in chunks to
    bound memory, over the first 2**27 tokens of a longer stream."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    n = min(len(ids), _ENTROPY_MAX_TOKENS)
    for i in range(0, n, 1 << 24):
        counts += np.bincount(np.asarray(ids[i : min(n, i + (1 << 24))]), minlength=vocab_size)
    p = counts[counts > 0] / max(1, n)
    return float(-(p * np.log(p)).sum())


def entropy_warning(loss: float, entropy: float) -> str | None:
    """One line when a final loss (nats/token) is not below the unigram entropy of the
    training tokens, the loss of predicting from token frequencies alone, so the model
    learned nothing a frequency table does not know; None otherwise (or when either is not
    a finite number: a diverged run says so itself)."""
    if not (math.isfinite(loss) and math.isfinite(entropy)) or loss < entropy:
        return None
    return (f"final val loss {loss:.4f} nats/token is not below the training data's unigram "
            f"entropy {entropy:.4f} nats/token: no better than predicting token frequencies "
            f"(train longer, or check the learning rate)")


def _bpe_path(corpus: Corpus, n: int, fractions: tuple[float, float], seed: int, root: Path
              ) -> Path:
    """Where the BPE tokenizer of this train split is cached."""
    key = _key(v=FORMAT_VERSION, data=corpus.identity, vf=fractions[0], tf=fractions[1],
               seed=seed, bpe=n)
    return root / "tokenizers" / f"bpe{n}-{key}.json"


def _build(corpus: Corpus, source: str, tokenizer: str, fractions: tuple[float, float],
           seed: int, root: Path, entry: Path) -> None:
    """Split, tokenize and write one cache entry: a folder renamed into place when complete."""
    docs = corpus.documents()
    split = split_by_document(len(docs), fractions[0], seed, source, test_fraction=fractions[1])
    texts = {s: [d + corpus.sep for d, k in zip(docs, split, strict=True) if k == i]
             for i, s in enumerate(SPLITS)}
    n = _bpe_size(tokenizer)
    bpe = None if n is None else _bpe_path(corpus, n, fractions, seed, root)
    if bpe is None:
        tok: ByteTokenizer | BPETokenizer = ByteTokenizer()
    elif bpe.exists():
        tok = BPETokenizer.load(bpe, n)
    else:  # trained on the train split only, so val and test are unseen by the tokenizer too
        tok = BPETokenizer.train(texts["train"], n)
    ids = {s: tok.encode(texts[s]) for s in SPLITS}
    for s in SPLITS:
        if len(ids[s]) == 0 and (s != "test" or fractions[1] > 0):
            raise DataError(f"{source}: the {s} split is empty")
    val_text = "".join(texts["val"])
    optimal = None
    if corpus.dyck is not None and n is None:
        c = corpus.dyck
        optimal = synthetic.dyck_optimal_loss(val_text, c.k, c.p, c.depth)
    dtype = _token_dtype(tok.vocab_size)
    meta = dict(version=FORMAT_VERSION, source=source, identity=corpus.identity,
                tokenizer=tokenizer, vocab_size=tok.vocab_size, dtype=dtype,
                bytes_per_token=len(val_text.encode("utf-8")) / len(ids["val"]),
                test_bytes_per_token=(len("".join(texts["test"]).encode("utf-8"))
                                      / len(ids["test"]) if len(ids["test"]) else None),
                optimal_loss=optimal, unigram_entropy=unigram_entropy(ids["train"],
                                                                       tok.vocab_size))
    with atomic_dir(entry, marker="meta.json") as tmp:  # another process may win the race
        for s in SPLITS:
            _write_tokens(tmp / f"{s}.bin", ids[s].astype(dtype))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if bpe is not None and not bpe.exists():  # before the entry, only valid with it
            tok.save(bpe)


# --- datasets --------------------------------------------------------------------------------


@dataclass(eq=False)
class Dataset:
    """Train, val and test token streams (read-only memmaps; test is empty without a test
    split) with what a scaling law needs: bytes_per_token (UTF-8 bytes per val token, and
    test_bytes_per_token per test token), optimal_loss (Bayes loss in nats/token, Dyck with
    bytes only, else None) and unigram_entropy (nats/token of the train split)."""

    source: str
    tokenizer: str
    vocab_size: int
    train: np.ndarray = field(repr=False)
    val: np.ndarray = field(repr=False)
    bytes_per_token: float
    optimal_loss: float | None
    unigram_entropy: float
    codec: ByteTokenizer | BPETokenizer | None = field(default=None, repr=False)
    test: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16), repr=False)
    test_bytes_per_token: float = math.nan

    def _data(self, split: str, seq_len: int) -> np.ndarray:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        data = getattr(self, split)
        if len(data) < seq_len + 1:
            raise DataError(f"{self.source}: the {split} split has {len(data)} tokens, "
                            f"fewer than seq_len + 1 = {seq_len + 1}")
        return data

    @property
    def window_dtype(self) -> torch.dtype:
        """The compact dtype of token windows: uint16 while every id fits (vocab <= 65536),
        4x less to copy and pin than int64; the device widens them (see `as_batch`)."""
        return torch.uint16 if self.vocab_size <= 1 << 16 else torch.int64

    def _windows(self, data: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
        np_dtype = np.uint16 if self.window_dtype == torch.uint16 else np.int64
        return torch.from_numpy(np.asarray(data[starts[:, None] + np.arange(seq_len + 1)],
                                           dtype=np_dtype))

    def get_windows(self, split: str, batch_size: int, seq_len: int, step: int, seed: int = 0,
                    rows: slice = slice(None)) -> torch.Tensor:
        """The batch of `step` as token windows (batch_size, seq_len + 1) in `window_dtype`:
        x is a window's first seq_len tokens, y its last. A pure function of the arguments
        (a run resumed at `step` sees the same batches); `rows` takes a share of the batch,
        so data-parallel workers split the very batch one worker would see."""
        data = self._data(split, seq_len)
        rng = np.random.default_rng([seed, step, batch_size, seq_len, SPLITS.index(split)])
        starts = rng.integers(0, len(data) - seq_len, size=batch_size)
        return self._windows(data, starts[rows], seq_len)

    def get_batch(self, split: str, batch_size: int, seq_len: int, step: int, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows x, y (int64, (batch_size, seq_len)), y = x shifted by one token:
        `get_windows` split in two."""
        return as_batch(self.get_windows(split, batch_size, seq_len, step, seed))

    def eval_batches(self, split: str, batch_size: int, seq_len: int, n_batches: int
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """n_batches fixed batches of evenly spaced windows of a held-out split ("val" or
        "test"), the same on every call."""
        data = self._data(split, seq_len)
        starts = np.linspace(0, len(data) - seq_len - 1, batch_size * n_batches)
        starts = starts.round().astype(np.int64).reshape(n_batches, batch_size)
        return (as_batch(self._windows(data, s, seq_len)) for s in starts)

    def val_batches(self, batch_size: int, seq_len: int, n_batches: int
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """n_batches fixed batches of evenly spaced val windows, the same on every call."""
        return self.eval_batches("val", batch_size, seq_len, n_batches)

    def has_split(self, split: str, seq_len: int) -> bool:
        """Whether `split` holds at least one window of seq_len + 1 tokens."""
        return len(getattr(self, split)) >= seq_len + 1

    def bits_per_byte(self, loss: float, split: str = "val") -> float:
        """A loss in nats/token as bits per UTF-8 byte of `split` (val or test; NaN for
        tokens: without the option)."""
        per_token = self.test_bytes_per_token if split == "test" else self.bytes_per_token
        return bits_per_byte(loss, per_token)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of text (not for tokens: sources)."""
        if self.codec is None:
            raise DataError(f"{self.source}: pre-tokenized, no tokenizer to encode with")
        return self.codec.encode([text])

    def decode(self, ids) -> str:
        """Text of token ids (not for tokens: sources)."""
        if self.codec is None:
            raise DataError(f"{self.source}: pre-tokenized, no tokenizer to decode with")
        return self.codec.decode(ids)


def as_batch(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x and targets y (int64, (B, seq_len)) of token windows (B, seq_len + 1) of any
    integer dtype, on the windows' device."""
    w = windows.long()
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


@dataclass(frozen=True)
class TokensOptions:
    """Options of a tokens: source."""

    vocab: int = 0  # 0: max id + 1
    dtype: str = "uint16"  # of a .bin file (nanoGPT's convention)
    bytes_per_token: float = math.nan


def _load_tokens(src: Source, source: str, tokenizer: str, val_fraction: float,
                 test_fraction: float) -> Dataset:
    opts = typed_options(source, src.options, TokensOptions)
    if tokenizer != "bytes":
        raise DataError(f"{source}: already tokenized; tokenizer {tokenizer!r} does not apply")
    path = Path(src.name).expanduser()
    if not path.is_file():
        raise DataError(f"{source}: no such file: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{source}: empty file: {path}")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r")
        else:
            dtype = np.dtype(opts.dtype)
            if dtype.kind not in "ui":
                raise DataError(f"{source}: dtype {opts.dtype!r} is not an integer type")
            arr = np.memmap(path, dtype=dtype, mode="r")
    except (TypeError, ValueError) as e:
        raise DataError(f"{source}: cannot read {path}: {e}") from None
    if arr.ndim != 1 or arr.dtype.kind not in "ui" or len(arr) < 2:
        raise DataError(f"{source}: need a 1-D integer array of 2+ tokens, got {arr.dtype} "
                        f"{arr.shape}")
    top = int(arr.max())
    vocab = opts.vocab or top + 1
    if top >= vocab:
        raise DataError(f"{source}: token id {top} >= vocab={vocab}")
    n_test = max(1, round(test_fraction * len(arr))) if test_fraction > 0 else 0
    n_val = min(len(arr) - n_test - 1, max(1, round(val_fraction * len(arr))))
    if n_val < 1:
        raise DataError(f"{source}: {len(arr)} tokens are too few for a train/val/test split")
    cut = len(arr) - n_test
    train, val, test = arr[: cut - n_val], arr[cut - n_val : cut], arr[cut:]
    return Dataset(source, "pretokenized", vocab, train, val, opts.bytes_per_token, None,
                   unigram_entropy(train, vocab), test=test,
                   test_bytes_per_token=opts.bytes_per_token)


def load_dataset(source: str, tokenizer: str = "bytes", *, val_fraction: float = 0.1,
                 seed: int = 0, test_fraction: float = 0.0,
                 cache_dir: str | Path | None = None) -> Dataset:
    """Load a source (see the module docstring), tokenizing and caching it on first use.
    val_fraction and test_fraction are the shares of documents (of tokens, for tokens:) held
    out for val and test (0: no test split); seed picks them."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be in (0, 1)")
    if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise DataError(f"test_fraction={test_fraction} must be in [0, 1) and leave a train "
                        f"split beside val_fraction={val_fraction}")
    src = parse_source(source)
    if src.kind == "tokens":
        return _load_tokens(src, source, tokenizer, val_fraction, test_fraction)
    n = _bpe_size(tokenizer)
    root = cache_root(cache_dir)
    corpus = resolve(src, source, root)
    fractions = (val_fraction, test_fraction)
    key = _key(v=FORMAT_VERSION, data=corpus.identity, tok=tokenizer, vf=val_fraction,
               tf=test_fraction, seed=seed)
    entry = root / "datasets" / key
    bpe = None if n is None else _bpe_path(corpus, n, fractions, seed, root)
    if not (entry / "meta.json").exists() or (bpe and not bpe.exists()):
        shutil.rmtree(entry, ignore_errors=True)  # tokens without their tokenizer are useless
        _build(corpus, source, tokenizer, fractions, seed, root, entry)
    meta = json.loads((entry / "meta.json").read_text())
    split = {s: _read_tokens(entry / f"{s}.bin", meta["dtype"]) for s in SPLITS}
    codec = ByteTokenizer() if bpe is None else BPETokenizer.load(bpe, meta["vocab_size"])
    return Dataset(source, tokenizer, meta["vocab_size"], split["train"], split["val"],
                   meta["bytes_per_token"], meta["optimal_loss"], meta["unigram_entropy"], codec,
                   test=split["test"], test_bytes_per_token=meta["test_bytes_per_token"]
                   or math.nan)


def _read_tokens(path: Path, dtype: str) -> np.ndarray:
    """A cached split as a read-only memmap (an empty split, which memmap refuses, as [])."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
