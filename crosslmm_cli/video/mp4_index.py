"""Every frame of an MP4/MOV video track, read from its sample tables (``stts``, ``ctts``, ``stss``,
``stsz``, ``stsc``, ``stco``/``co64``) and its edit list (``elst``) without touching the media data.

A demuxer walks every sample to list them (PyAV: 0.4 s for a 60-minute file); the tables give the
same answer in milliseconds. Presentation times follow libavformat's rules, so they equal the
``pts`` its demuxer and PyAV report: ``dts + ctts``, shifted by the edit's media time and by a
leading empty edit, frames outside the edit not shown. What the tables cannot describe simply
(fragmented files, several non-empty edits, inconsistent tables) returns None and the caller scans
the packets instead. Every count read from the file is checked against the file's size first, so
a small file claiming a billion samples costs nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Mp4Track:
    timescale: int  # ticks per second; PyAV's stream time base is 1 / timescale
    pts: np.ndarray  # (N,) int64, the shown samples' presentation times, sorted
    keyframe: np.ndarray  # (N,) bool
    complete: bool  # False when the file ends before the data of some samples (truncated)
    declared_seconds: float  # what the tables claim: shown span of every sample, present or not


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """Yield (type, payload start, payload end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    position = start
    while position + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, position + 8)[0]
            header = 16
        elif size == 0:
            size = end - position
        if size < header:
            return
        yield kind, position + header, min(position + size, end)
        position += size


def _read_moov(path: Path) -> bytes | None:
    """The ``moov`` box's payload, or None for a fragmented file or one without it."""
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        position = 0
        while position + 8 <= file_size:
            f.seek(position)
            header = f.read(16)
            size, kind = struct.unpack_from(">I4s", header)
            header_size = 8
            if size == 1:
                size, header_size = struct.unpack_from(">Q", header, 8)[0], 16
            elif size == 0:
                size = file_size - position
            if size < header_size or kind == b"moof":  # fragmented: sample tables live in the fragments
                return None
            if kind == b"moov":
                f.seek(position + header_size)
                return f.read(size - header_size)
            position += size
    return None


def _find(data: bytes, start: int, end: int, kind: bytes):
    for box, payload, box_end in _boxes(data, start, end):
        if box == kind:
            return payload, box_end
    return None


def _video_track(moov: bytes) -> dict[bytes, tuple[int, int]] | None:
    """Where the first video track's boxes are: mdhd, elst and the sample tables."""
    for kind, start, end in _boxes(moov):
        if kind != b"trak":
            continue
        mdia = _find(moov, start, end, b"mdia")
        if mdia is None:
            continue
        hdlr = _find(moov, *mdia, b"hdlr")
        if hdlr is None or moov[hdlr[0] + 8: hdlr[0] + 12] != b"vide":
            continue
        mdhd = _find(moov, *mdia, b"mdhd")
        minf = _find(moov, *mdia, b"minf")
        stbl = _find(moov, *minf, b"stbl") if minf else None
        if mdhd is None or stbl is None:
            return None
        tables = {b"mdhd": mdhd}
        edts = _find(moov, start, end, b"edts")
        if edts is not None and (elst := _find(moov, *edts, b"elst")) is not None:
            tables[b"elst"] = elst
        for name in (b"stts", b"stss", b"ctts", b"stsz", b"stsc", b"stco", b"co64"):
            if (found := _find(moov, *stbl, name)) is not None:
                tables[name] = found
        return tables
    return None


def _table(moov: bytes, box: tuple[int, int], dtype: str, header: int = 8) -> np.ndarray:
    """The entries of a full box whose payload is version/flags, a count, then ``count`` records."""
    start, end = box
    count = struct.unpack_from(">I", moov, start + 4)[0]
    record = np.dtype(dtype)
    if start + header + count * record.itemsize > end:
        raise ValueError("table longer than its box")
    return np.frombuffer(moov, record, count, start + header)


def _run_lengths(counts: np.ndarray, values: np.ndarray, limit: int) -> np.ndarray:
    """``values`` each repeated ``counts`` times, refusing (ValueError) more than ``limit`` in all."""
    if int(counts.astype(np.int64).sum()) > limit:
        raise ValueError("more samples claimed than the file can hold")
    return np.repeat(values.astype(np.int64), counts.astype(np.int64))


def _timescale(moov: bytes, header: int) -> int:
    version = moov[header]
    return struct.unpack_from(">I", moov, header + (20 if version == 1 else 12))[0]


def _edit(moov: bytes, tables: dict, timescale: int) -> tuple[int, int, int | None] | None:
    """(media time, delay, shown ticks or None for all) of the edit list in track ticks; None when
    it has more than one non-empty edit (the caller then asks the demuxer)."""
    if b"elst" not in tables:
        return 0, 0, None
    start = tables[b"elst"][0]
    version = moov[start]
    entries = _table(moov, tables[b"elst"], ">u8,>i8,>i4" if version == 1 else ">u4,>i4,>i4")
    mvhd = _find(moov, 0, len(moov), b"mvhd")
    movie_scale = _timescale(moov, mvhd[0]) if mvhd else timescale
    delay, edits = 0, []
    for duration, media_time, _ in entries:
        if media_time == -1 and not edits:
            delay += int(duration)
        elif media_time != -1:
            edits.append((int(media_time), int(duration)))
    if len(edits) > 1 or movie_scale <= 0:
        return None
    media_time, duration = edits[0] if edits else (0, 0)
    shown = duration * timescale // movie_scale if duration else None
    return media_time, delay * timescale // movie_scale, shown


def read_track(path: str | Path) -> Mp4Track | None:
    """The shown frames of the first video track of a plain (not fragmented) MP4/MOV, or None."""
    try:
        path = Path(path)
        file_size = path.stat().st_size
        moov = _read_moov(path)
        tables = _video_track(moov) if moov else None
        if tables is None or not {b"stts", b"stsz", b"stsc"} <= tables.keys():
            return None
        timescale = _timescale(moov, tables[b"mdhd"][0])
        stts = _table(moov, tables[b"stts"], ">u4,>u4")
        durations = _run_lengths(stts["f0"], stts["f1"], file_size)  # a sample is at least one byte
        count = len(durations)
        if count == 0 or timescale <= 0:
            return None  # no samples in moov: fragmented
        dts = np.concatenate([[0], np.cumsum(durations)[:-1]])
        pts = dts.copy()
        if b"ctts" in tables:
            ctts = _table(moov, tables[b"ctts"], ">u4,>i4")  # signed whatever the version, as libavformat reads it
            offsets = _run_lengths(ctts["f0"], ctts["f1"], file_size)[:count]
            pts[: len(offsets)] += offsets
        keyframe = np.ones(count, dtype=bool)
        if b"stss" in tables:
            keyframe[:] = False
            numbers = _table(moov, tables[b"stss"], ">u4").astype(np.int64) - 1
            keyframe[numbers[(numbers >= 0) & (numbers < count)]] = True
        edit = _edit(moov, tables, timescale)
        if edit is None:
            return None
        media_time, delay, shown_ticks = edit
        visible = pts >= media_time
        if shown_ticks is not None:
            visible &= pts < media_time + shown_ticks
        offsets, sizes = _sample_locations(moov, tables, count)
        present = np.cumprod(offsets + sizes <= file_size).astype(bool)  # in decode order: a prefix
        shown_pts = pts - media_time
        if visible.any():  # libavformat moves an edit that starts between two frames onto the first shown one
            shown_pts -= max(0, int(shown_pts[visible].min()))
        shown_pts += delay
        declared = _span_seconds(np.sort(shown_pts[visible]), durations, timescale)
        order = np.argsort(shown_pts[visible & present], kind="stable")
        return Mp4Track(timescale, shown_pts[visible & present][order], keyframe[visible & present][order],
                        bool(present.all()), declared)
    except (OSError, struct.error, IndexError, ValueError):
        return None


def _span_seconds(pts: np.ndarray, durations: np.ndarray, timescale: int) -> float:
    if len(pts) == 0:
        return 0.0
    return float(pts[-1] - pts[0] + int(np.median(durations))) / timescale


def _sample_locations(moov: bytes, tables: dict, count: int) -> tuple[np.ndarray, np.ndarray]:
    """File offset and size of every sample, from ``stsz``, ``stsc`` and ``stco``/``co64``."""
    stsz = tables[b"stsz"][0]
    fixed, sized = struct.unpack_from(">II", moov, stsz + 4)
    if sized != count:
        raise ValueError("stsz and stts disagree on the sample count")
    if fixed:
        sizes = np.full(count, fixed, dtype=np.int64)
    else:
        sizes = _table(moov, (stsz + 4, tables[b"stsz"][1]), ">u4").astype(np.int64)
    wide = b"co64" in tables
    chunk_offsets = _table(moov, tables[b"co64" if wide else b"stco"], ">u8" if wide else ">u4").astype(np.int64)
    chunks = len(chunk_offsets)
    runs = _table(moov, tables[b"stsc"], ">u4,>u4,>u4")  # (first chunk, samples per chunk, description)
    per_chunk = np.zeros(chunks, dtype=np.int64)
    for index, (first, samples, _) in enumerate(runs):
        last = runs[index + 1][0] - 1 if index + 1 < len(runs) else chunks
        per_chunk[first - 1: last] = samples
    held = np.cumsum(per_chunk)  # samples in this chunk and all before it
    if chunks == 0 or held[-1] < count:
        raise ValueError("chunks hold fewer samples than the tables claim")
    chunk = np.searchsorted(held, np.arange(count), side="right")  # chunk of each sample
    chunk_first_sample = held - per_chunk
    ends = np.concatenate([[0], np.cumsum(sizes)])  # bytes of all samples before each one
    offsets = chunk_offsets[chunk] + ends[:count] - ends[chunk_first_sample[chunk]]
    return offsets, sizes
