"""Where samples come from, read lazily: a source is a list of shards, each of which can say how
many samples it holds (cheaply: tar headers, a parquet footer, one block of an annotation file) and
hand out its i-th one. Nothing is loaded whole; each process keeps a few shard indexes.

- ``TarShards``: webdataset tar shards (img2dataset / video2dataset output: ``key.jpg|key.mp4`` with
  ``key.txt|key.json``); members are read at their offsets, found from the tar headers alone;
- ``ParquetFiles``: parquet with embedded media bytes (``image``, ``images``, ``video`` columns) or
  paths, read a row group at a time with pyarrow;
- ``AnnotationRows``: LLaVA-style ``.jsonl`` (or ``.json``) rows naming ``image``/``video`` files under a
  media root; a ``.jsonl`` is cut into blocks of BLOCK_BYTES, each a shard. A training folder (videos
  and ``annotations.jsonl``) is one of these.

A shard that cannot be read at all holds no samples; what was wrong is kept in ``broken``. Before
step 1, ``damage()`` looks at every file of a source cheaply (a stat and a few bytes at each end) for
what a real download leaves: a file a brace range names that is missing, an empty file, an HTML
error page saved under a shard's name, a tar or JSON list cut short; each is reported with what it
costs.
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import UserError
from .index_cache import cached_index
from .json_list import item_spans, read_item
from .records import Media, Record, media_kind, split_member

BLOCK_BYTES = 4 << 20  # an annotation .jsonl is read in shards of this many bytes
MAX_ROW_BYTES = 1 << 20  # an annotation row longer than this is a mistake, skipped unread
KEPT_INDEXES = 64  # shard indexes each process keeps


class LRU(OrderedDict):
    """A cache of at most ``size`` values: ``get_or_make(key, make)`` returns the kept value or makes
    (and keeps) it. Plain data without a lock, so that a dataset holding it pickles into spawned
    loader workers (crosslmm_cli.budget_lru is the byte-bounded one)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or_make(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class Source:
    """A list of shards; subclasses read them."""

    def __init__(self, spec: str, shards: list, media_root: Path | None = None):
        self.spec, self.shards, self.media_root = spec, shards, media_root
        self.broken: dict[int, str] = {}  # shard -> why it could not be read
        self.indexes = LRU(KEPT_INDEXES)
        self.missing: list[str] = []  # files the source's path names that do not exist
        self.bad_rows: list[str] = []  # rows found unusable before step 1 (see survey)

    def survey(self) -> None:
        """What a source reads of itself before step 1, besides :meth:`damage`: nothing, but for a
        training folder, which reads every row (crosslmm_cli.training_data.folder)."""

    def damage(self) -> list[str]:
        """One line per missing or damaged file: which, why, and the samples it loses."""
        lines = [f"{Path(name).name} does not exist (named by {self.spec!r}): all its samples are lost"
                 for name in self.missing]
        for path in self.files():
            problem = file_damage(path)
            if problem is not None:
                lines.append(f"{path.name}: {problem}")
        return lines

    def shard_name(self, shard: int) -> str:
        return Path(self.shards[shard]).name

    def files(self) -> list[Path]:
        return [Path(shard) for shard in self.shards]

    def count(self, shard: int) -> int:
        return len(self.index(shard))

    def index(self, shard: int) -> list:
        def make():
            try:
                return self.build_index(shard)
            except (OSError, ValueError, tarfile.TarError) as error:
                self.broken[shard] = f"{self.shard_name(shard)} cannot be read ({error})"
                return []

        return self.indexes.get_or_make(shard, make)

    def build_index(self, shard: int) -> list:
        raise NotImplementedError

    def row_name(self, shard: int, row: int) -> str:
        """The row's name within its shard, unique there: what reports and samples.jsonl call it,
        whether or not it could be read."""
        return f"row {row + 1}"

    def row_key(self, shard: int, row: int) -> str:
        """What a row is called before it is read (its record's key may add its id)."""
        return f"{self.shard_name(shard)}/{self.row_name(shard, row)}"

    def read(self, shard: int, row: int) -> Record:
        raise NotImplementedError

    def media_file(self, name) -> Media:
        """A media file named by a row, which must lie under the media root."""
        if not isinstance(name, str) or media_kind(name) is None:
            raise ValueError(f"{name!r} is not an image or video file name")
        path = (self.media_root / name).resolve()
        if not path.is_relative_to(self.media_root):
            raise ValueError(f"media path {name!r} leaves {self.media_root}; it is refused")
        return Media(media_kind(name), path.name, path=path)


def file_damage(path: Path) -> str | None:
    """What a download left wrong in a shard or annotation file, from its size and its ends."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes): all its samples are lost"
    with open(path, "rb") as f:
        head = f.read(512)
        f.seek(max(0, size - 1024))
        tail = f.read()
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "is an HTML page, not data (an error page saved by a download?): all its samples are lost"
    if path.suffix == ".tar":
        if len(head) < 512 or head[257:262] != b"ustar":
            return "is not a tar archive: all its samples are lost"
        if size % 512 or tail.strip(b"\0"):  # a whole archive ends in two zero blocks
            whole = tar_samples_before_the_cut(path)
            return (f"is cut short (a partial download): {whole} whole samples kept, the sample it is cut in "
                    "and any after it are lost")
    if path.suffix == ".json" and not (head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")
                                       and tail.rstrip().endswith(b"]")):
        return "is not a whole JSON list (cut short?): all its rows are lost"
    if path.suffix == ".parquet" and not (head.startswith(b"PAR1") and tail.endswith(b"PAR1")):
        return "is not a whole parquet file (cut short?): all its rows are lost"
    return None


def tar_samples_before_the_cut(path: Path) -> int:
    try:
        index = TarShards(str(path), [str(path)]).build_index(0)
    except (OSError, tarfile.TarError):
        return 0
    return len(index)


# ---- webdataset tar shards --------------------------------------------------------------------------
class TarShards(Source):
    def build_index(self, shard: int) -> list[list[tuple[str, int, int]]]:
        """Per sample, its members as (extension, data offset, size), from the headers; a shard cut
        short keeps the samples before the cut."""
        samples, last_key = [], None
        with tarfile.open(self.shards[shard], "r:") as tar:
            try:
                for member in tar:
                    parts = split_member(member.name) if member.isfile() else None
                    if parts is None:
                        continue
                    key, extension = parts
                    if key != last_key:
                        samples.append((key, []))
                        last_key = key
                    samples[-1][1].append((extension, member.offset_data, member.size))
            except tarfile.ReadError:
                if samples:
                    samples.pop()  # the sample the cut went through may miss members
                self.broken[shard] = f"{self.shard_name(shard)} is cut short after {len(samples)} samples"
        return samples

    def row_name(self, shard: int, row: int) -> str:
        return self.index(shard)[row][0]  # its members' key: webdataset keys are unique in a shard

    def read(self, shard: int, row: int) -> Record:
        key, members = self.index(shard)[row]
        files = {}
        with open(self.shards[shard], "rb") as stream:
            for extension, offset, size in members:
                stream.seek(offset)
                files[extension] = stream.read(size)
        fields = json.loads(files["json"]) if "json" in files else {}
        if not isinstance(fields, dict):
            raise ValueError(".json is not an object")
        if "txt" in files and "caption" not in fields:
            fields["caption"] = files["txt"].decode("utf-8")
        media = [Media(media_kind(ext), f"{key.rsplit('/', 1)[-1]}.{ext}", data=data)
                 for ext, data in sorted(files.items()) if media_kind(ext)]
        return Record(f"{self.shard_name(shard)}/{key}", fields, one_kind(media))


def one_kind(media: list[Media]) -> list[Media]:
    """A sample's visual input: its one video, or its images (a multi-image sample)."""
    videos = [m for m in media if m.kind == "video"]
    if len(videos) > 1:
        raise ValueError(f"{len(videos)} videos in one sample; a sample has one video or some images")
    return videos or media


# ---- parquet ----------------------------------------------------------------------------------------
class ParquetFiles(Source):
    KEY_COLUMNS = ("__key__", "key")

    def __init__(self, spec, shards, media_root=None):
        super().__init__(spec, shards, media_root)
        self.groups = LRU(1)  # the row group last read (its rows are usually read together)

    def build_index(self, shard: int) -> list[int]:
        """The row groups' first rows, and the row count last."""
        import pyarrow.parquet as pq

        metadata = pq.ParquetFile(self.shards[shard]).metadata
        starts = [0]
        for group in range(metadata.num_row_groups):
            starts.append(starts[-1] + metadata.row_group(group).num_rows)
        return starts

    def count(self, shard: int) -> int:
        starts = self.index(shard)
        return starts[-1] if starts else 0

    def read(self, shard: int, row: int) -> Record:
        import bisect

        import pyarrow.parquet as pq

        starts = self.index(shard)
        group = bisect.bisect_right(starts, row) - 1
        table = self.groups.get_or_make((shard, group), lambda: pq.ParquetFile(self.shards[shard]).read_row_group(group))
        fields = table.slice(row - starts[group], 1).to_pylist()[0]
        # a webdataset key names one row; an "id" may be shared by several, so the row number comes first
        key = next((str(fields[c]) for c in self.KEY_COLUMNS if fields.get(c) is not None), None) or \
            with_id(self.row_name(shard, row), fields)
        media = []
        for column in ("video", "image", "images"):
            cells = fields.pop(column, None)
            for number, cell in enumerate(cells if isinstance(cells, list) else [cells] if cells is not None else []):
                media.append(self.cell_media(cell, column.rstrip("s"), f"{key}.{number}"))
        return Record(f"{self.shard_name(shard)}/{key}", fields, one_kind(media))

    def cell_media(self, cell, kind: str, stem: str) -> Media:
        """A media cell: bytes, {"bytes": ..., "path": ...} as the hub's Image/Video features store
        them, or a path under the media root."""
        if isinstance(cell, dict):
            if cell.get("bytes") is None:
                return self.media_file(cell.get("path"))
            name = cell.get("path") or f"{stem}.{'jpg' if kind == 'image' else 'mp4'}"
            return Media(kind, Path(name).name, data=cell["bytes"])
        if isinstance(cell, bytes):
            return Media(kind, f"{stem}.{'jpg' if kind == 'image' else 'mp4'}", data=cell)
        return self.media_file(cell)


# ---- annotation files -------------------------------------------------------------------------------
class AnnotationRows(Source):
    """Shards are (file, block) pairs: a ``.jsonl`` file cut into blocks of ``block_bytes`` (a row
    belongs to the block its first byte lies in), a ``.json`` list one shard, read item by item at
    the spans :mod:`json_list` finds. Indexes are kept in ``index_dir`` when the run gives one."""

    def __init__(self, spec, files: list[Path], media_root: Path, block_bytes: int = BLOCK_BYTES,
                 index_dir: Path | None = None):
        shards = []
        for path in files:
            blocks = max(1, -(-path.stat().st_size // block_bytes)) if path.suffix == ".jsonl" else 1
            shards += [(path, block) for block in range(blocks)]
        super().__init__(spec, shards, media_root)
        self.block_bytes, self.index_dir = block_bytes, index_dir
        self.block_lines: dict[Path, np.ndarray] = {}

    def files(self) -> list[Path]:
        return sorted({path for path, _ in self.shards})

    def shard_name(self, shard: int) -> str:
        path, block = self.shards[shard]
        return path.name if path.suffix == ".json" else f"{path.name}@{block}"

    def row_key(self, shard: int, row: int) -> str:
        return f"{self.shards[shard][0].name}/{self.row_name(shard, row)}"

    def lines_before(self, path: Path) -> np.ndarray:
        """The lines of ``path`` before each of its blocks."""
        if path not in self.block_lines:
            self.block_lines[path] = cached_index(path, self.index_dir, f"lines-{self.block_bytes}",
                                                  lambda: lines_before_blocks(path, self.block_bytes))
        return self.block_lines[path]

    def build_index(self, shard: int) -> np.ndarray:
        """(rows, 2): the byte offset and the (1-based) line number of each row of the block; or the
        byte spans of a .json list's items."""
        path, block = self.shards[shard]
        if path.suffix == ".json":
            return cached_index(path, self.index_dir, "spans", lambda: item_spans(path))
        start, end, rows = block * self.block_bytes, (block + 1) * self.block_bytes, []
        line = int(self.lines_before(path)[block]) + 1  # the line byte `start` lies in
        with open(path, "rb") as f:
            if start:
                f.seek(start - 1)
                if f.read(1) != b"\n":
                    skip_rest_of_line(f)  # the row that began in the block before
                    line += 1
            while (offset := f.tell()) < end:
                piece = f.readline(MAX_ROW_BYTES + 1)
                if not piece:
                    break
                if len(piece) > MAX_ROW_BYTES and not piece.endswith(b"\n"):
                    skip_rest_of_line(f)
                if piece.strip():
                    rows.append((offset, line))
                line += 1
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def row_name(self, shard: int, row: int) -> str:
        """``item N`` of a .json list, ``line N`` of a .jsonl file (1-based, as editors count)."""
        path, _ = self.shards[shard]
        return f"item {row + 1}" if path.suffix == ".json" else f"line {self.index(shard)[row][1]}"

    def read(self, shard: int, row: int) -> Record:
        path, _ = self.shards[shard]
        place = self.index(shard)[row]
        if path.suffix == ".json":
            fields = read_item(path, place)
        else:
            with open(path, "rb") as f:
                f.seek(int(place[0]))
                line = f.readline(MAX_ROW_BYTES + 1)
            if len(line) > MAX_ROW_BYTES:
                raise ValueError(f"a row longer than {MAX_ROW_BYTES >> 20} MB")
            fields = json.loads(line.decode("utf-8").removeprefix("\ufeff"))
        return self.record(path, self.row_name(shard, row), fields)

    def record(self, path: Path, name: str, fields) -> Record:
        """The record of a row of ``path`` named ``name`` there; ValueError for a row that is not an
        object, or names a media file badly."""
        if not isinstance(fields, dict):
            raise ValueError("a row must be a JSON object")
        media = [self.media_file(file) for column in ("video", "image")
                 for file in (fields.get(column) if isinstance(fields.get(column), list) else [fields.get(column)])
                 if file is not None]
        return Record(f"{path.name}/{with_id(name, fields)}", fields, one_kind(media))  # no media: a text-only row


def lines_before_blocks(path: Path, block_bytes: int) -> np.ndarray:
    """The newlines before each block of ``path``: a count per block, read a block at a time."""
    counts = [0]
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            counts.append(counts[-1] + block.count(b"\n"))
    return np.array(counts[:-1] if len(counts) > 1 else counts, dtype=np.int64)


def skip_rest_of_line(f) -> None:
    """Read up to the next line without holding a long one."""
    while (piece := f.readline(MAX_ROW_BYTES)) and not piece.endswith(b"\n"):
        pass


def with_id(name: str, fields: dict) -> str:
    """A row's name with its "id" when it has one (several rows may share an id; the name is unique)."""
    return f"{name} (id {fields['id']})" if isinstance(fields.get("id"), (str, int)) else name


# ---- from a recipe's path ---------------------------------------------------------------------------
NUMBER_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand(pattern: str) -> tuple[list[str], list[str]]:
    """webdataset's shard notation (``shards-{00000..00099}.tar``, zero-padded ranges) and globs:
    the files that exist, and those a range names that do not."""
    match = NUMBER_RANGE.search(pattern)
    if match:
        first, last = match.group(1), match.group(2)
        names = [pattern[:match.start()] + str(n).zfill(len(first)) + pattern[match.end():]
                 for n in range(int(first), int(last) + 1)]
        found, missing = [], []
        for name in names:
            more, absent = expand(name)
            found += more
            missing += absent or ([] if more or glob.has_magic(name) else [name])
        return found, missing
    return sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern] if Path(pattern).exists() else [], []


def open_source(path: str, media: str | None, base: Path) -> Source:
    """The source a recipe's ``path`` (relative to the recipe's folder) names; :class:`UserError`
    when it names nothing readable."""
    pattern = str(base / path) if not Path(path).is_absolute() else path
    found, missing = ([pattern], []) if Path(pattern).is_dir() else expand(pattern)  # a folder's name is not a glob
    files = [Path(p) for p in found]
    if not files:
        raise UserError(f"source {path!r} matches no file (looked for {pattern})")
    source = open_files(path, files, media, base)
    source.missing = missing
    return source


def open_files(path: str, files: list[Path], media: str | None, base: Path) -> Source:
    from .folder import ANNOTATION_FILES, FolderRows  # (it builds on this module)

    if len(files) == 1 and files[0].is_dir():
        kinds = sorted({f.suffix for f in files[0].iterdir() if f.suffix in (".tar", ".parquet")})
        if kinds and not any((files[0] / name).is_file() for name in ANNOTATION_FILES):
            raise UserError(f"source {path!r} is a folder of {kinds[0]} files; name them with a pattern: "
                            f"{str(Path(path) / ('*' + kinds[0]))!r}")
        return FolderRows(path, files[0])
    suffixes = {f.suffix for f in files}
    if len(suffixes) > 1:
        raise UserError(f"source {path!r} mixes {', '.join(sorted(suffixes))} files; give each kind its own source")
    suffix = suffixes.pop()
    root = Path(media).expanduser() if media else files[0].parent
    root = (base / root if not root.is_absolute() else root).resolve()
    if suffix == ".tar":
        return TarShards(path, [str(f) for f in files])
    if suffix == ".parquet":
        return ParquetFiles(path, [str(f) for f in files], root)
    if suffix in (".jsonl", ".json"):
        return AnnotationRows(path, files, root)
    raise UserError(f"source {path!r}: {suffix or 'extensionless'} files are not a source; give .tar shards, "
                    ".parquet files, a .jsonl/.json annotation file or a training folder")
