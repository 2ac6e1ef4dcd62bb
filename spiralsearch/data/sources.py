"""Source strings -> documents: parsing `kind:name[:options]` and reading each kind.

See `spiralsearch.data.dataset` for the list of sources. A Corpus is a source's documents (made on
demand, so a cache hit need not generate or decode anything) with the identity that keys
the cache: a canonical option string for synthetic sources, a content hash for files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from glob import glob, has_magic
from pathlib import Path

import numpy as np

from spiralsearch.data import synthetic
from spiralsearch.data.cache import DataError, cache_root

__all__ = ["Corpus", "DataError", "Source", "anchored", "cache_root", "parse_source", "resolve",
           "split_by_document", "split_documents", "typed_options"]

KINDS = ("synthetic", "text", "tokens", "corpus")
_OPTIONS = re.compile(r"^\w+=[^,=]*(,\w+=[^,=]*)*$")
_DOC_BREAK = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")  # 2+ blank lines
TEXT_SEP = "\n\n"  # joins text documents


@dataclass(frozen=True)
class Source:
    """A parsed source string: kind:name[:options]."""

    kind: str
    name: str
    options: dict[str, str]


@dataclass(frozen=True)
class NoOptions:
    pass


def parse_source(source: str) -> Source:
    """Split 'kind:name[:opt=v,...]'. A path's own colons are kept: the last ':' starts the
    options only if what follows looks like options."""
    kind, _, rest = source.partition(":")
    if kind not in KINDS:
        raise DataError(f"unknown source kind {kind!r} in {source!r} (known: {', '.join(KINDS)})")
    if not rest:
        raise DataError(f"source {source!r} names nothing after '{kind}:'")
    head, _, tail = rest.rpartition(":")
    if head and _OPTIONS.match(tail):
        name, opts = head, tail
    elif kind in ("synthetic", "corpus"):  # their names have no colons: all the rest is options
        name, _, opts = rest.partition(":")
    else:
        name, opts = rest, ""
    options = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise DataError(f"{source}: bad option {item!r} (expected name=value)")
        options[key.strip()] = value.strip()
    return Source(kind, name, options)


def anchored(source: str, base: str | Path) -> str:
    """`source` with a relative file path (text:, tokens:) made absolute against folder
    `base`; other sources, and absolute or ~ paths, unchanged. A sweep's trials run in
    Ray's own working folders, so the driver's folder is passed along and paths are anchored
    where the trial runs; the trial's config (and identity) keeps the path as written."""
    src = parse_source(source)
    if src.kind not in ("text", "tokens"):
        return source
    path = Path(src.name)
    if path.is_absolute() or src.name.startswith("~"):
        return source
    rest = source[len(src.kind) + 1 + len(src.name):]  # ":options", if any
    return f"{src.kind}:{Path(base) / path}{rest}"


def typed_options(source: str, options: dict[str, str], cls: type):
    """Build the options dataclass cls from strings, typed by its fields' defaults."""
    known = {f.name: f for f in fields(cls)}
    kw: dict[str, object] = {}
    for key, value in options.items():
        if key not in known:
            names = ", ".join(known) or "none"
            raise DataError(f"{source}: unknown option {key!r} (known: {names})")
        typ = type(known[key].default)
        try:
            kw[key] = typ(value)
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(typ, typ.__name__)
            raise DataError(f"{source}: option {key}={value!r} is not {kind}") from None
    try:
        return cls(**kw)
    except ValueError as e:
        raise DataError(f"{source}: {e}") from None


@dataclass
class Corpus:
    """A document source before tokenization. identity keys the cache, so it must change
    whenever documents() would."""

    identity: str
    documents: Callable[[], list[str]]
    sep: str = ""  # appended to every document
    dyck: synthetic.DyckConfig | None = None


def _synthetic(src: Source, source: str) -> Corpus:
    gens = {"dyck": (synthetic.DyckConfig, synthetic.generate_dyck),
            "pcfg": (synthetic.PCFGConfig, synthetic.generate_pcfg)}
    if src.name not in gens:
        raise DataError(f"unknown synthetic language {src.name!r} (known: {', '.join(gens)})")
    cls, gen = gens[src.name]
    cfg = typed_options(source, src.options, cls)

    def documents() -> list[str]:
        try:
            return gen(cfg)
        except ValueError as e:
            raise DataError(f"{source}: {e}") from None

    opts = ",".join(f"{k}={v}" for k, v in asdict(cfg).items())
    identity = f"synthetic:{src.name}:{opts}|gen={synthetic.GEN_VERSION}"
    return Corpus(identity, documents, dyck=cfg if src.name == "dyck" else None)


def _text_files(pattern: str, source: str) -> list[Path]:
    path = Path(pattern).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = (f for f in path.rglob("*") if f.is_file())
        return sorted(f for f in files if not any(p[0] == "." for p in f.relative_to(path).parts))
    if has_magic(pattern):
        files = sorted(Path(f) for f in glob(str(path), recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"{source}: the pattern matches no files")
        return files
    raise DataError(f"{source}: no such file or folder: {path}")


def split_documents(text: str) -> list[str]:
    """A text file's documents: the parts between runs of 2+ blank lines, stripped."""
    parts = (p.strip() for p in _DOC_BREAK.split(text.replace("\r\n", "\n")))
    return [p for p in parts if p]


def _text(src: Source, source: str) -> Corpus:
    typed_options(source, src.options, NoOptions)
    files = _text_files(src.name, source)
    raw = [f.read_bytes() for f in files]
    if not any(b.strip() for b in raw):
        raise DataError(f"{source}: empty: no text in {len(files)} file(s)")
    h = hashlib.sha256(b"text-docs-v1")
    for b in raw:
        h.update(len(b).to_bytes(8, "little") + b)

    def documents() -> list[str]:
        docs: list[str] = []
        for f, b in zip(files, raw, strict=True):
            try:
                docs += split_documents(b.decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{source}: {f} is not UTF-8 text") from None
        return docs

    return Corpus(h.hexdigest(), documents, sep=TEXT_SEP)


def _corpus(src: Source, source: str, root: Path) -> Corpus:
    from spiralsearch.data import corpora  # lazily: shipped and fetched corpora

    typed_options(source, src.options, NoOptions)
    if src.name == "sotu":
        files = [corpora.SOTU_FILE]
    elif src.name == "prose":
        files = corpora.prose_files(root)
    else:
        raise DataError(f"unknown corpus {src.name!r} (known: sotu, prose)")
    h = hashlib.sha256(b"jsonl-docs-v1")
    for f in files:
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return Corpus(h.hexdigest(), lambda: [t for f in files for t in corpora.read_texts(f)],
                   sep=TEXT_SEP)


def split_by_document(n_docs: int, val_fraction: float, seed: int, source: str,
                      test_fraction: float = 0.0) -> np.ndarray:
    """The split of every document, 0 train, 1 val, 2 test (int8, one per document), picked
    by a seeded shuffle: the first round(test_fraction * n_docs) shuffled documents are test
    (so the test set moves with neither val_fraction nor the training seed), the next
    round(val_fraction * n_docs), at least 1, are val, the rest (at least 1) train."""
    n_test = round(test_fraction * n_docs) if test_fraction > 0 else 0
    if test_fraction > 0:
        n_test = max(1, n_test)
    if n_docs < 2 + n_test:
        raise DataError(f"{source}: {n_docs} document(s); a train/val{'/test' if n_test else ''}"
                        f" split by document needs {2 + n_test} or more (separate documents by "
                        "2+ blank lines, or give more files)")
    n_val = min(n_docs - n_test - 1, max(1, round(val_fraction * n_docs)))
    order = np.random.default_rng(seed).permutation(n_docs)
    split = np.zeros(n_docs, dtype=np.int8)
    split[order[:n_test]] = 2
    split[order[n_test:n_test + n_val]] = 1
    return split


def resolve(src: Source, source: str, root: Path) -> Corpus:
    """The documents of a synthetic:, text: or corpus: source (root: the cache folder)."""
    if src.kind == "synthetic":
        return _synthetic(src, source)
    if src.kind == "text":
        return _text(src, source)
    if src.kind == "corpus":
        return _corpus(src, source, root)
    raise DataError(f"{source}: a {src.kind}: source has no documents")
