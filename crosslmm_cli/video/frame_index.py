"""Every shown frame of a video stream, named by its presentation timestamp.

A frame's index is its position in presentation order and its time is its pts from the demuxer,
never ``t x average fps``. The index comes from the MP4 sample tables where the file has them
(milliseconds), else from one pass over the stream's packets without decoding (PyAV: 0.37 s for an
hour of 25 fps video, no pixel touched).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from . import mp4_index


@dataclass
class FrameIndex:
    time_base: Fraction  # seconds per pts tick
    pts: np.ndarray  # (N,) int64, sorted: the shown frames in presentation order
    keyframe: np.ndarray  # (N,) bool
    complete: bool  # False when the file ends before frames its header declares (truncated)
    declared_seconds: float  # how long the header says the video is
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
        return FrameIndex(stream.time_base, track.pts, track.keyframe, track.complete, track.declared_seconds)
    return _scan(container, stream)


def _scan(container, stream) -> FrameIndex | None:
    pts, keyframe = [], []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None or packet.is_discard:
            continue
        pts.append(packet.pts)
        keyframe.append(packet.is_keyframe)
    if not pts:
        return None
    pts_array = np.array(pts, dtype=np.int64)
    order = np.argsort(pts_array, kind="stable")
    pts_array, keyframe_array = pts_array[order], np.array(keyframe, dtype=bool)[order]
    index = FrameIndex(stream.time_base, pts_array, keyframe_array, True, 0.0)
    if stream.duration:
        declared = float(stream.duration * stream.time_base)
    elif container.duration:
        # demuxers disagree on whether the container's duration counts from its start time (MPEG-TS)
        # or from zero (Matroska); the shorter reading never calls a whole file truncated
        first = float(pts_array[0] * stream.time_base)
        declared = container.duration / av.time_base - max(first, first - (container.start_time or 0) / av.time_base)
    else:
        declared = index.duration
    index.declared_seconds = declared
    # a cut file keeps its header: more than a second (or 5 %) missing is a truncation, not rounding
    index.complete = index.duration >= declared - max(1.0, 0.05 * declared)
    return index
