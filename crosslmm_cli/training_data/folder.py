"""A training folder as a source: videos (or images) anywhere under it and ``annotations.jsonl``
(or ``annotations.json``) naming them, in any of the row formats of :mod:`records`.

Unlike a streamed source, a folder is surveyed whole before step 1: each row is parsed and rendered
as training will read it, and the files it names are looked for. A bad row (not JSON, not UTF-8, no
known format, a path leaving the folder, a missing file) is left out and named by its line (or item)
number; the rows kept are the source's one shard, as (start byte, end byte, number) spans of the
file, 24 bytes a row, so its size is known (``--epochs``) and an epoch is a full shuffle of them.
Whether a video decodes is found out when a loader worker first reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from .index_cache import cached_index
from .json_list import NotAJsonList, item_spans, read_item
from .records import Record, conversation
from .sources import MAX_ROW_BYTES, AnnotationRows, skip_rest_of_line

ANNOTATION_FILES = ("annotations.jsonl", "annotations.json")


def annotation_file(folder: Path) -> Path:
    for name in ANNOTATION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{folder} has no annotations.jsonl or annotations.json; add one next to the videos")


def json_lines(path: Path, max_bytes: int = MAX_ROW_BYTES):
    """(line number, start, end, text, None) for each non-blank line of a JSON-lines file, (line
    number, start, end, None, what is wrong) for a line too long or not UTF-8; a UTF-8 byte-order
    mark is not part of the first row."""
    with open(path, "rb") as f:
        number = 0
        while raw := f.readline(max_bytes + 1):
            number, end = number + 1, f.tell()
            start = end - len(raw)
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                skip_rest_of_line(f)  # without holding it
                yield number, start, f.tell(), None, f"longer than {max_bytes >> 20} MB; split it into rows"
                continue
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw, start = raw[3:], start + 3
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield number, start, end, None, (f"not UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1}); "
                                                 "save the file as UTF-8")
                continue
            if text.strip():
                yield number, start, end, text, None


def json_items(path: Path, index_dir: Path | None):
    """As :func:`json_lines`, for the items of a ``.json`` list (numbered from 1); a file that is not
    one whole list is a :class:`UserError`."""
    try:
        spans = cached_index(path, index_dir, "spans", lambda: item_spans(path))
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.object[error.start]:#04x}); save it as UTF-8") from None
    except NotAJsonList as error:
        raise UserError(f"{path} is not one whole JSON list of rows: {error}") from None
    with open(path, "rb") as f:
        for number, (start, end) in enumerate(spans, 1):
            f.seek(int(start))
            yield number, int(start), int(end), f.read(int(end - start)).decode("utf-8"), None


class FolderRows(AnnotationRows):
    """One shard: the folder's annotation file, its usable rows found by :meth:`survey`."""

    def __init__(self, spec: str, folder: Path):
        path = annotation_file(folder)
        super().__init__(spec, [path], folder.resolve(), block_bytes=max(1, path.stat().st_size))
        self.path = path
        self.unit = "item" if path.suffix == ".json" else "line"
        self.rows: np.ndarray | None = None  # (rows, 3): start, end, number

    def survey(self) -> None:
        """Read every row as training will; keep the usable ones, name the others in ``bad_rows``."""
        rows, seen = [], {}
        entries = json_items(self.path, self.index_dir) if self.unit == "item" else json_lines(self.path)
        for number, start, end, text, problem in entries:
            if problem is None:
                problem = self.row_problem(text, f"{self.unit} {number}", seen)
            if problem is None:
                rows.append((start, end, number))
            else:
                self.bad_rows.append(f"{self.path.name} {self.unit} {number}: {problem}")
        self.rows = np.array(rows, dtype=np.int64).reshape(-1, 3)

    def row_problem(self, text: str, name: str, seen: dict[Path, bool]) -> str | None:
        """What makes a row unusable, None if nothing does; ``seen``: whether each file looked for is there."""
        try:
            record = self.record(self.path, name, json.loads(text))
        except json.JSONDecodeError as error:
            return f"malformed JSON ({error.msg})"
        except ValueError as error:
            return str(error)
        try:
            conversation(record.fields, record.media[0].kind if record.media else None)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            return f"not a conversation, question/answer or caption row ({error})"
        for media in record.media:
            if media.path not in seen:
                seen[media.path] = media.path.is_file()
            if not seen[media.path]:
                return f"{media.kind} {media.name} is missing"
        return None

    def build_index(self, shard: int) -> np.ndarray:
        if self.rows is None:
            raise RuntimeError("a training folder is surveyed before it is read")
        return self.rows

    def row_name(self, shard: int, row: int) -> str:
        return f"{self.unit} {self.index(shard)[row][2]}"

    def read(self, shard: int, row: int) -> Record:
        return self.record(self.path, self.row_name(shard, row), read_item(self.path, self.index(shard)[row]))
