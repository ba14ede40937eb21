"""Which times to sample: segment centres over [start, end], at most ``fps`` per second."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError

SEEK_MODES = ("auto", "exact", "keyframe")
# frames are decoded at most this large, then resized for the vision tower (384 px for SigLIP)
MAX_SIDE = 768


@dataclass
class SamplingRequest:
    num_frames: int = 32  # frames to sample (segment centres)
    fps: float | None = None  # at most this many frames per second of the span
    start: float | None = None  # seconds from the first frame
    end: float | None = None  # seconds from the first frame
    seek: str = "auto"  # "auto" | "exact" | "keyframe"
    max_side: int | None = None  # downscale so the longer side is at most this (saves memory)

    def __post_init__(self):
        if self.seek not in SEEK_MODES:
            raise UserError(f"--seek must be one of {', '.join(SEEK_MODES)}, got {self.seek!r}")
        if self.num_frames < 1:
            raise UserError(f"--frames must be at least 1, got {self.num_frames}")
        for flag, value in (("--fps", self.fps), ("--start", self.start), ("--end", self.end)):
            if value is not None and not math.isfinite(value):
                raise UserError(f"{flag} must be a finite number of seconds, got {value}")
        if self.fps is not None and self.fps <= 0:
            raise UserError(f"--fps must be positive, got {self.fps}")
        if self.start is not None and self.start < 0:
            raise UserError(f"--start must be >= 0 seconds, got {self.start}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise UserError(f"--end ({self.end}s) must come after --start ({self.start}s)")


def sample_times(duration: float, frame_count_in, request: SamplingRequest) -> list[float]:
    """Segment centres over [start, end] (seconds from the first frame), at most ``fps`` per second
    and at most one per frame; ``frame_count_in(start, end)`` counts the frames shown in a span."""
    start = request.start or 0.0
    if start >= duration:
        raise UserError(f"--start {start:g}s is past the end of the video ({duration:.2f}s)")
    end = min(request.end, duration) if request.end is not None else duration
    span = end - start
    count = request.num_frames
    if request.fps is not None:
        count = min(count, max(1, math.floor(span * request.fps)))
    count = min(count, max(1, frame_count_in(start, end)))
    step = span / count
    return [start + (i + 0.5) * step for i in range(count)]
