"""The data layer's error type and cache folder (shared by sources, corpora and dataset)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DataError", "cache_root"]


class DataError(ValueError):
    """A data source or tokenizer that cannot be loaded; the message names the problem."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: cache_dir, else $SPIRALSEARCH_CACHE, else ~/.cache/spiralsearch."""
    root = cache_dir or os.environ.get("SPIRALSEARCH_CACHE") or Path.home() / ".cache/spiralsearch"
    return Path(root).expanduser()
