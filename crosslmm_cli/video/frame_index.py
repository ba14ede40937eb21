"""Every shown frame of a video stream, named by its presentation timestamp.

A frame's index is its position in presentation order and its time is its pts from the demuxer,
never ``t x average fps``. The index comes from the MP4 sample tables where the file has them
(milliseconds), else from one pass over the stream's packets without decoding (PyAV: 0.37 s for an
hour of 25 fps video, no pixel touched).

Two kinds of file need more than the packets' timestamps:
- Timestamps that restart mid-file (MPEG-TS recordings joined with ``cat``, broadcast captures,
  concatenated HLS segments; any format FFmpeg flags AVFMT_TS_DISCONT): each run of timestamps is
  a segment, placed after the one before it as players and the ffmpeg CLI do, and the index keeps
  the offset each segment's timestamps get (``segment_offsets``).
- An open GOP cut at its start: the first shown frames are leading pictures of the first keyframe
  (RASL in HEVC and VVC) that refer to frames before the cut, and the decoder drops them. The index
  lists only the frames a decode from the start shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from . import mp4_index
from .container import decoded_frames, open_video


@dataclass
class FrameIndex:
    time_base: Fraction  # seconds per pts tick
    pts: np.ndarray  # (N,) int64, sorted: the shown frames in presentation order
    keyframe: np.ndarray  # (N,) bool
    complete: bool  # False when the file ends before frames its header declares (truncated)
    declared_seconds: float  # how long the header says the video is
    # (S,) pts ticks added to each timestamp segment's own pts to place it after the one before; a
    # single 0 for a file whose timestamps never restart (``pts`` holds the placed timestamps)
    segment_offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    seconds: np.ndarray = field(init=False, repr=False)  # (N,) float64, from the first frame
    keyframes: np.ndarray = field(init=False, repr=False)  # (K,) positions of the keyframes

    def __post_init__(self):
        self.seconds = (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)
        self.keyframes = np.flatnonzero(self.keyframe)
        if len(self.keyframes) == 0 or self.keyframes[0] != 0:
            # the first shown frame decodes even when it is not flagged (e.g. after an edit-list cut)
            self.keyframes = np.concatenate([[0], self.keyframes])

    def __len__(self) -> int:
        return len(self.pts)

    @property
    def restarts(self) -> bool:
        """Whether the file's own timestamps restart somewhere (it cannot be seeked by them)."""
        return len(self.segment_offsets) > 1

    def keep(self, shown: np.ndarray) -> "FrameIndex":
        """The index of the frames where ``shown`` (N,) is true."""
        return FrameIndex(self.time_base, self.pts[shown], self.keyframe[shown], self.complete, self.declared_seconds,
                          self.segment_offsets)

    @property
    def frame_seconds(self) -> float:
        """Typical display time of one frame (the median gap; the last frame is shown that long)."""
        return float(np.median(np.diff(self.seconds))) if len(self) > 1 else 0.04

    @property
    def duration(self) -> float:
        return float(self.seconds[-1]) + self.frame_seconds

    @property
    def variable_frame_rate(self) -> bool:
        """Gaps between frames differ by more than timestamp rounding (a tick, or 1 %)."""
        if len(self) < 3:
            return False
        gaps = np.diff(self.pts)
        return int(gaps.max() - gaps.min()) > max(2, 0.01 * float(np.median(gaps)))

    def shown_at(self, seconds: float) -> int:
        """Position of the frame a player shows at ``seconds`` (from the first frame)."""
        return max(0, int(np.searchsorted(self.seconds, seconds + 1e-9, side="right")) - 1)

    def keyframe_before(self, position: int) -> int:
        """Position of the last keyframe at or before ``position``."""
        return int(self.keyframes[np.searchsorted(self.keyframes, position, side="right") - 1])

    def nearest_keyframe(self, seconds: float) -> int:
        """Position of the keyframe shown nearest to ``seconds``."""
        times = self.seconds[self.keyframes]
        right = int(np.searchsorted(times, seconds))
        if right == len(times) or (right > 0 and seconds - times[right - 1] <= times[right] - seconds):
            right -= 1
        return int(self.keyframes[right])

    def position_of(self, pts: int) -> int:
        """Position of the frame with presentation time ``pts`` (or the last one before it; of
        frames that share a pts, which badly muxed files have, the last one decoded)."""
        return max(0, int(np.searchsorted(self.pts, pts, side="right")) - 1)

    def lists(self, pts: int) -> bool:
        """Whether a frame with presentation time ``pts`` is one of the shown frames."""
        at = int(np.searchsorted(self.pts, pts))
        return at < len(self.pts) and int(self.pts[at]) == pts

    def copies(self, position: int) -> int:
        """How many frames up to ``position`` share its pts (1 in a well-formed file)."""
        return position - int(np.searchsorted(self.pts, self.pts[position], side="left")) + 1


def build_index(path: str, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> FrameIndex | None:
    """The frame index of ``stream``, by the sample tables or a packet scan; None when no packet
    carries a timestamp."""
    track = mp4_index.read_track(path)
    if track is not None and len(track.pts) and Fraction(1, track.timescale) == stream.time_base:
        index = FrameIndex(stream.time_base, track.pts, track.keyframe, track.complete, track.declared_seconds)
    else:
        index = _scan(container, stream)
    return None if index is None else _without_frames_never_shown(path, index)


# AVFMT_TS_DISCONT: the format allows timestamp discontinuities (MPEG-TS, for one)
TS_DISCONT = 0x0200
# a forward jump in decoding timestamps this long is a discontinuity too (ffmpeg's -dts_delta_threshold)
JUMP_SECONDS = 10.0


def segment_offsets(dts: np.ndarray, time_base: Fraction) -> tuple[np.ndarray, np.ndarray]:
    """Each packet's segment (P,) and each segment's offset (S,) in pts ticks, for decoding
    timestamps ``dts`` (P,) in file order that may restart: a segment begins where the timestamps
    go back, or leap forward by more than JUMP_SECONDS, and is placed one frame after the last
    packet of the segment before it."""
    gaps = np.diff(dts)
    breaks = np.flatnonzero((gaps < 0) | (gaps > JUMP_SECONDS / float(time_base))) + 1
    segment = np.zeros(len(dts), dtype=np.int64)
    segment[breaks] = 1
    segment = np.cumsum(segment)
    steady = gaps[(gaps > 0) & ~np.isin(np.arange(1, len(dts)), breaks)]
    frame = int(np.median(steady)) if len(steady) else 1
    offsets = [0]
    for start in breaks:
        offsets.append(offsets[-1] + int(dts[start - 1]) + frame - int(dts[start]))
    return segment, np.array(offsets, dtype=np.int64)


def _scan(container, stream) -> FrameIndex | None:
    pts, dts, keyframe = [], [], []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None or packet.is_discard:
            continue
        pts.append(packet.pts)
        dts.append(packet.dts)
        keyframe.append(packet.is_keyframe)
    if not pts:
        return None
    pts_array = np.array(pts, dtype=np.int64)
    offsets = np.zeros(1, dtype=np.int64)
    if container.format.flags & TS_DISCONT and None not in dts:
        segment, offsets = segment_offsets(np.array(dts, dtype=np.int64), stream.time_base)
        pts_array = pts_array + offsets[segment]
    order = np.argsort(pts_array, kind="stable")
    pts_array, keyframe_array = pts_array[order], np.array(keyframe, dtype=bool)[order]
    index = FrameIndex(stream.time_base, pts_array, keyframe_array, True, 0.0, offsets)
    if stream.duration:
        declared = float(stream.duration * stream.time_base)
    elif container.duration:
        # demuxers disagree on whether the container's duration counts from its start time (MPEG-TS)
        # or from zero (Matroska); the shorter reading never calls a whole file truncated
        first = float(pts_array[0] * stream.time_base)
        declared = container.duration / av.time_base - max(first, first - (container.start_time or 0) / av.time_base)
    else:
        declared = index.duration
    if index.restarts:  # the header spans one segment's timestamps at best
        declared = index.duration
    index.declared_seconds = declared
    # a cut file keeps its header: more than a second (or 5 %) missing is a truncation, not rounding
    index.complete = index.duration >= declared - max(1.0, 0.05 * declared)
    return index


def _without_frames_never_shown(path: str, index: FrameIndex) -> FrameIndex:
    """``index`` less the frames before its first keyframe that a decode from the start never shows
    (the leading pictures of an open GOP cut at its start). Only a file whose first shown frame is
    not a keyframe is decoded, up to that keyframe."""
    flagged = np.flatnonzero(index.keyframe)
    if len(flagged) == 0 or flagged[0] == 0:
        return index
    first_keyframe = int(index.pts[flagged[0]])
    shown = set()
    container, stream = open_video(path)
    with container:
        try:
            for frame in decoded_frames(container, stream):
                shown.add(int(frame.pts))  # the first segment's own timestamps: its offset is 0
                if frame.pts >= first_keyframe:
                    break
        except av.FFmpegError:
            return index  # a file that does not decode this far is judged where its frames are read
    kept = (index.pts >= first_keyframe) | np.isin(index.pts, list(shown))
    return index if kept.all() else index.keep(kept)
