"""Open a video once: check it, index its frames and describe it, or refuse it in one line."""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass, field
from pathlib import Path

import av

from ..errors import UserError
from .container import decoded_frames, open_video
from .frame_index import FrameIndex, build_index


@dataclass
class VideoInfo:
    path: str
    width: int  # as displayed, rotation applied
    height: int
    fps: float  # average frame rate: frames / duration
    frame_count: int  # frames shown (the readable ones)
    duration: float  # seconds, first frame shown to the end of the last
    rotation: int  # degrees counter-clockwise, from the display matrix
    variable_frame_rate: bool
    codec: str
    start_time: float = 0.0  # seconds: the first frame's pts on the container clock
    keyframes: list[float] = field(default_factory=list, repr=False)  # seconds from the first frame
    warnings: list[str] = field(default_factory=list)  # one line per real problem (e.g. truncated)
    index: FrameIndex | None = field(default=None, repr=False)  # None for a folder of frames

    def summary(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in ("keyframes", "index")}


def check_path(path: str | Path) -> Path:
    """``path`` as a readable regular file, or :class:`UserError` saying what is wrong with it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise UserError(f"{str(path)[:80]}…: the path is too long for this system; rename or move the file") from None
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            raise UserError(f"{path}: no such file; check the path") from None
        raise UserError(f"{path} cannot be read ({error.strerror}); check its permissions") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path} is a directory with no image frames; give a video file or a folder of frames")
    if not stat.S_ISREG(mode):
        raise UserError(f"{path} is not a regular file (a pipe or a device?); save the video to a file first")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes); it is not a video")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror}); check its permissions") from None
    return path


def probe(path: str | Path) -> VideoInfo:
    """Validate ``path``, index every frame of its first video stream and decode the first one;
    :class:`UserError` when it is not a readable video (missing, empty, not a video, truncated past
    its first frame, audio only, a codec FFmpeg cannot decode)."""
    path = check_path(path)
    container, stream = open_video(path)
    with container:
        codec = stream.codec_context.name
        try:
            index = build_index(str(path), container, stream)
        except av.FFmpegError:
            index = None
    if index is None:
        raise UserError(f"{path} has a video stream but no frames could be found in it (truncated or corrupt?)")
    first = first_frame(path)
    if first is None:
        raise UserError(f"{path}: no frame of its {codec} video could be decoded (corrupt, or a codec FFmpeg cannot decode)")
    rotation = int(round(first.rotation)) % 360
    width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
    warnings = []
    if not index.complete:
        warnings.append(f"{path} looks truncated: only the first {index.duration:.1f}s of {index.declared_seconds:.1f}s "
                        "could be read; frames are sampled from that part")
    return VideoInfo(
        path=str(path), width=width, height=height, fps=len(index) / index.duration, frame_count=len(index),
        duration=index.duration, rotation=rotation, variable_frame_rate=index.variable_frame_rate, codec=codec,
        start_time=float(index.pts[0] * index.time_base), keyframes=[float(s) for s in index.seconds[index.keyframes]],
        warnings=warnings, index=index,
    )


def first_frame(path: str | Path) -> av.VideoFrame | None:
    """The first frame the decoder gives (it says the displayed size and rotation), or None."""
    container, stream = open_video(path)
    with container:
        return next(decoded_frames(container, stream), None)

