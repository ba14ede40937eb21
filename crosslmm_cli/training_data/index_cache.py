"""Indexes of an input file (a JSON list's item spans, a JSON-lines file's line count at each block)
kept as ``.npy`` files in the run's index folder: found once, and memory-mapped by every process and
loader worker that reads the file, so they share its pages."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cached_index(path: Path, folder: Path | None, kind: str, make: Callable[[], np.ndarray]) -> np.ndarray:
    """``make()``'s index of ``path``, from ``folder`` when it holds it for this very file (same size
    and modification time), else made and kept there (written under a temporary name and renamed:
    processes that make it at once each write a whole file). Memory-mapped; without a folder, made."""
    if folder is None:
        return make()
    stat = path.stat()
    cache = folder / f"{path.name}.{stat.st_size}.{stat.st_mtime_ns}.{kind}.npy"
    if not cache.is_file():
        index = make()
        folder.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as f:
            np.save(f, index)
        os.replace(partial, cache)
    return np.load(cache, mmap_mode="r", allow_pickle=False)
