"""Decode the frames at given positions of a :class:`FrameIndex` with PyAV.

Frames are matched by presentation timestamp. For each wanted frame (in time order) the decoder
either goes on from where it is or seeks to the keyframe before the frame, whichever costs less (a
seek counted as SEEK_COST_FRAMES decoded frames), so sparse samples seek and dense ones stream;
keyframe mode always seeks, straight to the keyframe it wants. Only wanted frames are converted to
RGB (and scaled, by swscale's area filter, in the same step). A file whose timestamps restart
(:attr:`FrameIndex.restarts`) cannot be seeked by them: it is decoded from the start, in one pass,
and each decoded frame's timestamp is placed on the index's timeline as it comes.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np

from ..cores import usable_cores
from ..errors import UserError
from .container import decoded_frames, open_video
from .frame_index import FrameIndex
from .probe import VideoInfo

# Seeks that may land after the wanted frame (a demuxer without an index seeks by guesswork) are
# retried from this much earlier, doubling each time, before decoding from the start.
RESEEK_SECONDS = (1.0, 4.0, 16.0)
# A seek flushes the decoder and refills its delay: about as dear as decoding this many frames on.
SEEK_COST_FRAMES = 16
# decoders run side by side, one per core the process may use
DECODE_WORKERS = min(8, usable_cores())
CODEC_THREADS: int | None = None  # libavcodec's own threads per decoder; None: its choice


def decode_on_one_core() -> None:
    """For a process that is one of several decoding at once (a DataLoader worker): one decoder
    with no codec threads, as threads of its own would only fight the other processes for the
    cores (measured on 2 cores, a 3 s 360p clip at 8 frames: 93 ms of CPU per clip threaded,
    69 ms on one thread)."""
    global DECODE_WORKERS, CODEC_THREADS
    DECODE_WORKERS, CODEC_THREADS = 1, 1


class _Cursor:
    """A decoder positioned somewhere in the file, with one frame of look-ahead. It gives only the
    frames the index lists: a frame the decoder outputs with any other pts (one before the first
    shown frame, say) is never on screen, and taking it would put its pixels under the position
    and time of the listed frame before it."""

    def __init__(self, path: str, thread_type: str, index: FrameIndex):
        self.path, self.thread_type, self.index = path, thread_type, index
        self.container = None
        self.rewind()

    def rewind(self) -> None:
        """Decode from the very start: a fresh open, which no demuxer gets wrong."""
        self.close()
        self.container, self.stream = open_video(self.path)
        self.stream.thread_type = self.thread_type
        if CODEC_THREADS is not None:
            self.stream.codec_context.thread_count = CODEC_THREADS
        self._restart()

    def seek(self, pts: int) -> None:
        if self.index.restarts:  # a timestamp names several places: go on, or start again
            if self.last_pts is not None and pts <= self.last_pts:
                self.rewind()
            return
        self.container.seek(int(pts), stream=self.stream, backward=True, any_frame=False)  # flushes the decoder
        self._restart()

    def _restart(self) -> None:
        self.frames: Iterator[av.VideoFrame] = decoded_frames(self.container, self.stream)
        if self.index.restarts:
            self.frames = on_the_timeline(self.frames, self.index.segment_offsets)
        self.ahead: av.VideoFrame | None = None
        self.last_pts: int | None = None  # pts of the last frame taken from the decoder

    def close(self) -> None:
        if self.container is not None:
            self.container.close()

    def next(self) -> av.VideoFrame | None:
        frame, self.ahead = self.ahead, None
        while frame is None:
            frame = next(self.frames, None)
            if frame is None:
                return None
            self.last_pts = frame.pts
            if not self.index.lists(frame.pts):
                frame = None
        return frame

    def frame_shown_at(self, pts: int, copies: int = 1) -> av.VideoFrame | None:
        """The frame on screen at ``pts`` (the last with pts <= it; the ``copies``-th with pts equal
        to it), decoding on; None when the first frame decoded here is already later (the seek
        overshot) or nothing is left."""
        shown = None
        while (frame := self.next()) is not None:
            if frame.pts > pts:
                self.ahead = frame
                break
            shown = frame
            copies -= frame.pts == pts
            if copies == 0:
                break
        return shown


def on_the_timeline(frames: Iterator[av.VideoFrame], offsets) -> Iterator[av.VideoFrame]:
    """Frames decoded from the start of a file whose timestamps restart, each with its pts placed
    on the index's timeline: the decoder shows each segment's frames in rising pts, so a pts that
    goes back starts the next segment."""
    segment, last = 0, None
    for frame in frames:
        if last is not None and frame.pts < last:
            segment = min(segment + 1, len(offsets) - 1)
        last = frame.pts
        frame.pts = frame.pts + int(offsets[segment])
        yield frame


def decode_positions(info: VideoInfo, positions: list[int], size: tuple[int, int], keyframes_only: bool) -> tuple[np.ndarray, list[int]]:
    """RGB frames (T, H, W, 3) of ``size`` = (width, height) as displayed, at ``positions`` of
    ``info.index`` (any order, repeats decoded once), and the position of each frame returned.
    The distinct positions are split into contiguous runs, each decoded by its own decoder on its own
    core (measured on 2 cores, 128 frames of a 60-minute 720p file: keyframes 0.41 -> 0.25 s,
    exact 12.3 -> 8.7 s)."""
    distinct = sorted(set(positions))
    # a file without seeking is read in one pass: a second decoder would decode what the first does
    workers = 1 if info.index.restarts else max(1, min(len(distinct), DECODE_WORKERS))
    # one decoder running on through a whole run gains from frame threads; several decoders already
    # fill the cores, a lone keyframe per seek would wait for frame threads, and a damaged packet
    # can take the frames in flight in other threads with it
    threading = "AUTO" if workers == 1 and not keyframes_only and info.index.complete else "SLICE"
    runs = [[int(p) for p in run] for run in np.array_split(np.array(distinct), workers)]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda run: _decode_run(info, run, size, keyframes_only, threading), runs))
    decoded = {position: frame for part in parts for position, frame in part.items()}
    return np.stack([decoded[p][0] for p in positions]), [decoded[p][1] for p in positions]


def _decode_run(info: VideoInfo, distinct: list[int], size: tuple[int, int], keyframes_only: bool,
                threading: str) -> dict[int, tuple[np.ndarray, int]]:
    index = info.index
    decoded = {}
    cursor = _Cursor(info.path, threading, index)
    try:
        at = -1  # position of the last frame taken from the decoder; -1 when it starts afresh
        for position in distinct:
            keyframe = index.keyframe_before(position)
            if keyframe == 0 and at < 0:
                pass  # the first frames are reached from the start
            elif keyframes_only or at < 0 or position < at or position - at > position - keyframe + SEEK_COST_FRAMES:
                cursor.seek(index.pts[keyframe])
            frame = _frame_at(cursor, index, position)
            if frame is None:
                raise UserError(f"{info.path}: the frame at {index.seconds[position]:.2f}s could not be decoded "
                                "(the file is damaged there); try other --start/--end or re-encode the file")
            at = index.position_of(cursor.last_pts)
            decoded[position] = (_to_rgb(frame, size, info.rotation), index.position_of(frame.pts))
    finally:
        cursor.close()
    return decoded


def _frame_at(cursor: _Cursor, index: FrameIndex, position: int) -> av.VideoFrame | None:
    pts, copies = int(index.pts[position]), index.copies(position)
    frame = cursor.frame_shown_at(pts, copies)
    for back in RESEEK_SECONDS + (None,):
        if frame is not None:
            return frame
        if back is None:
            cursor.rewind()
        else:
            cursor.seek(pts - int(back / index.time_base))
        frame = cursor.frame_shown_at(pts, copies)
    return frame


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int], rotation: int) -> np.ndarray:
    width, height = (size[1], size[0]) if rotation in (90, 270) else size
    if (width, height) == (frame.width, frame.height):
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
    return np.ascontiguousarray(np.rot90(rgb, rotation // 90)) if rotation else rgb
