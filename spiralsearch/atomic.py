"""Atomic file writes: a temp file (or folder) beside the target, renamed into place, so a
crash or a kill never leaves half a file, and readers see the old version or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_save", "atomic_write", "atomic_write_bytes",
           "atomic_write_json", "atomic_write_text"]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp path in path's folder, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes the file 0600; the result gets a plain file's mode (0666 less umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes atomically; returns the path."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically; returns the path."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write indented JSON (and a final newline) atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save atomically (checkpoints); returns the path."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


@contextlib.contextmanager
def atomic_dir(dest: str | Path, marker: str) -> Iterator[Path]:
    """Fill a folder atomically: yields an empty temp folder beside `dest`, renamed to
    `dest` on success. If another process got there first (its `dest/marker` exists), ours
    is dropped: the two are the same content."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / marker).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
