"""JSON-lines files written one line at a time (eval samples, training metrics): a crash, a full disk
or a power cut can leave the last line half written, and a reader or a resume must get past it."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_rows(path: Path) -> list:
    """The complete lines of ``path`` (none when it does not exist); a line cut short is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def repair_tail(path: Path) -> None:
    """End the file with a complete line: a last line cut by a crash (disk full, power loss) is
    dropped, so the next row appended starts a line of its own instead of merging with it."""
    data = path.read_bytes() if path.exists() else b""
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
        data += b"\n"  # complete but for its newline
    except ValueError:
        data = data[:cut]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def append_row(path: Path, row: dict) -> None:
    """One line, on disk before this returns."""
    with open(path, "a") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
