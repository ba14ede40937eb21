"""Keyframe times of an MP4/MOV video track, read from its sample tables (``stss``, ``stts``,
``ctts``) without touching the media data.

ffmpeg can list keyframes too, but its demuxer walks every sample to do it (0.3 s for a 60-minute
720p file); the tables give the same answer in milliseconds. Fragmented files and other containers
return None, and the caller asks ffmpeg.
"""

from __future__ import annotations

import struct
from pathlib import Path

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
    with open(path, "rb") as f:
        position, file_size = 0, path.stat().st_size
        while position + 8 <= file_size:
            f.seek(position)
            header = f.read(16)
            size, kind = struct.unpack_from(">I4s", header)
            header_size = 8
            if size == 1:
                size, header_size = struct.unpack_from(">Q", header, 8)[0], 16
            elif size == 0:
                size = file_size - position
            if size < header_size:
                return None
            if kind == b"moov":
                f.seek(position + header_size)
                return f.read(size - header_size)
            if kind == b"moof":  # fragmented: sample tables live in the fragments
                return None
            position += size
    return None


def _find(data: bytes, start: int, end: int, kind: bytes):
    for box, payload, box_end in _boxes(data, start, end):
        if box == kind:
            return payload, box_end
    return None


def _video_track_tables(moov: bytes) -> dict[bytes, tuple[int, int]] | None:
    for kind, start, end in _boxes(moov):
        if kind != b"trak":
            continue
        tables: dict[bytes, tuple[int, int]] = {}
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
        tables[b"mdhd"] = mdhd
        for name in (b"stts", b"stss", b"ctts"):
            if (found := _find(moov, *stbl, name)) is not None:
                tables[name] = found
        return tables
    return None


def keyframe_times(path: str | Path) -> list[float] | None:
    """Presentation times (s, from the first shown frame) of the video keyframes, or None when the
    file is not a plain MP4/MOV with sample tables (then ask ffmpeg)."""
    try:
        moov = _read_moov(Path(path))
        tables = _video_track_tables(moov) if moov else None
        if tables is None or b"stts" not in tables:
            return None
        return _keyframe_times(moov, tables) or None  # no samples in moov: fragmented
    except (OSError, struct.error, IndexError, ValueError):
        return None


def _keyframe_times(moov: bytes, tables: dict[bytes, tuple[int, int]]) -> list[float]:
    mdhd = tables[b"mdhd"][0]
    version = moov[mdhd]
    timescale = struct.unpack_from(">I", moov, mdhd + (20 if version == 1 else 12))[0]

    def entries(name: bytes, fields: str):
        start = tables[name][0]
        count = struct.unpack_from(">I", moov, start + 4)[0]
        size = struct.calcsize(">" + fields)
        return [struct.unpack_from(">" + fields, moov, start + 8 + i * size) for i in range(count)]

    decode_times = []  # dts of every sample
    clock = 0
    for count, delta in entries(b"stts", "II"):
        for _ in range(count):
            decode_times.append(clock)
            clock += delta
    offsets = [0] * len(decode_times)
    if b"ctts" in tables:
        signed = moov[tables[b"ctts"][0]] == 1
        index = 0
        for count, offset in entries(b"ctts", "Ii" if signed else "II"):
            for _ in range(count):
                if index < len(offsets):
                    offsets[index] = offset
                index += 1
    presentation = [d + o for d, o in zip(decode_times, offsets)]
    if b"stss" in tables:
        keys = [number - 1 for (number,) in entries(b"stss", "I") if 0 < number <= len(presentation)]
    else:  # no sync table: every sample is a keyframe
        keys = list(range(len(presentation)))
    first_shown = min(presentation) if presentation else 0
    return sorted((presentation[k] - first_shown) / timescale for k in keys)
