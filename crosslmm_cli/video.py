"""Decode a local video and sample frames from it.

Samples are segment centres in time over [start, end]. Three ways to get them:

- exact, by seeking (OpenCV ``CAP_PROP_POS_FRAMES``): each sample costs up to one keyframe interval
  of decoding, good when samples are sparse and the frame must be the requested one;
- exact, sequential (OpenCV ``grab``): one pass over the span, good when samples are about one per
  keyframe interval or denser; always used for variable-frame-rate files, where frames are picked
  by their timestamps;
- fast (keyframes): the nearest keyframe to each sample, decoded alone by one ffmpeg process with one
  seeking input per sample; off by at most half a keyframe interval. Chosen automatically when
  samples are farther apart than the keyframe interval, unless ``exact`` is asked for.

ffmpeg (the binary imageio-ffmpeg ships, through ffmpeg-python) also probes the file and decodes
what OpenCV cannot open. Every problem a user can cause raises :class:`UserError`.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import ffmpeg
import numpy as np

from .errors import UserError
from .synthetic_video import ffmpeg_exe


@dataclass
class VideoInfo:
    path: str
    width: int  # as displayed, rotation applied
    height: int
    fps: float  # average frame rate
    frame_count: int
    duration: float  # seconds
    rotation: int  # degrees, from the display matrix
    variable_frame_rate: bool
    codec: str


@dataclass
class SampledFrames:
    pixels: np.ndarray  # (T, H, W, 3) uint8 RGB
    indices: list[int]  # frame numbers (for fast mode: the keyframe's)
    timestamps: list[float]  # seconds, presentation time of each returned frame
    requested: list[float]  # seconds, the segment centres that were asked for
    seek: str  # "exact-seek" | "exact-sequential" | "keyframe"
    backend: str  # "opencv" | "ffmpeg"
    seconds: float = 0.0  # wall time spent decoding
    keyframe_interval: float | None = None  # seconds, mean, when it was probed

    def summary(self) -> dict:
        """Everything but the pixels, for --json and --verbose."""
        data = {k: v for k, v in asdict(self).items() if k != "pixels"}
        data["shape"] = list(self.pixels.shape)
        return data


@dataclass
class SamplingRequest:
    num_frames: int = 32  # frames to sample (segment centres)
    fps: float | None = None  # at most this many frames per second of the span
    start: float | None = None  # seconds
    end: float | None = None  # seconds
    exact: bool = False  # force exact frames (never keyframe seeking)
    max_side: int | None = None  # downscale so the longer side is at most this (saves memory)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.num_frames < 1:
            raise UserError(f"--frames must be at least 1, got {self.num_frames}")
        if self.fps is not None and self.fps <= 0:
            raise UserError(f"--fps must be positive, got {self.fps}")
        if self.start is not None and self.start < 0:
            raise UserError(f"--start must be >= 0 seconds, got {self.start}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise UserError(f"--end ({self.end}s) must come after --start ({self.start}s)")


# ---- probing ------------------------------------------------------------------------------------
_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_RATE = re.compile(r"([\d.]+)(k?) (fps|tbr)")
_DURATION = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")


def check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a video file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes); it is not a video")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror}); check its permissions") from None
    return path


def _ffmpeg_probe(path: Path) -> str:
    """ffmpeg's description of the input (ffprobe is not shipped): its stderr for ``-i path``."""
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True, errors="replace")
    return result.stderr


def probe(path: str | Path) -> VideoInfo:
    """Validate ``path`` and describe its first video stream; :class:`UserError` when it is not a
    readable video (missing, empty, not a video, truncated, audio only, no frames)."""
    path = check_path(path)
    text = _ffmpeg_probe(path)
    stream = _STREAM.search(text)
    if stream is None:
        if re.search(r"Stream #\d+:\d+.*?: Audio:", text):
            raise UserError(f"{path} has no video stream (audio only?); give a file with video")
        raise UserError(f"{path} is not a readable video (corrupt, truncated, or not a video file)")
    stream_line = text[stream.start(): text.find("\n", stream.start())]
    rates = {kind: float(value) * (1000 if k else 1) for value, k, kind in _RATE.findall(stream_line)}
    duration_match = _DURATION.search(text)
    duration = 0.0
    if duration_match:
        hours, minutes, seconds = duration_match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    rotation_match = _ROTATION.search(text)
    rotation = int(round(float(rotation_match.group(1)))) % 360 if rotation_match else 0
    width, height = int(stream.group(2)), int(stream.group(3))
    if rotation in (90, 270):
        width, height = height, width
    fps = rates.get("fps") or rates.get("tbr") or 0.0
    tbr = rates.get("tbr") or fps

    capture = cv2.VideoCapture(str(path))
    frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    if capture.isOpened() and capture.get(cv2.CAP_PROP_FPS) > 0:
        fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    if frame_count <= 0:
        frame_count = int(round(duration * fps))
    if duration <= 0 and fps > 0:
        duration = frame_count / fps
    if frame_count <= 0 or fps <= 0:
        raise UserError(f"{path} has a video stream but no frames could be found in it (truncated or corrupt?)")
    return VideoInfo(
        path=str(path), width=width, height=height, fps=fps, frame_count=frame_count, duration=duration,
        rotation=rotation, variable_frame_rate=abs(fps - tbr) > 0.01 * tbr, codec=stream.group(1),
    )


def packet_times(path: str | Path, keyframes_only: bool = False) -> list[float]:
    """Presentation times (s) of the video packets, read from the container without decoding (a
    bitstream filter drops the non-keyframes when ``keyframes_only``); sorted."""
    args = [ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy"]
    if keyframes_only:
        args += ["-bsf:v", "noise=drop=not(key)"]
    result = subprocess.run(args + ["-f", "framecrc", "-"], capture_output=True, text=True, errors="replace")
    timebase = re.search(r"#tb 0: (\d+)/(\d+)", result.stdout)
    if timebase is None:
        return []
    scale = int(timebase.group(1)) / int(timebase.group(2))
    times = []
    for line in result.stdout.splitlines():
        if line and not line.startswith("#"):
            times.append(int(line.split(",")[2]) * scale)  # stream, dts, pts, duration, size, hash
    return sorted(times)


def keyframe_times(path: str | Path) -> list[float]:
    return packet_times(path, keyframes_only=True)


# ---- sampling -----------------------------------------------------------------------------------
def sample_times(info: VideoInfo, request: SamplingRequest) -> list[float]:
    """Segment centres over [start, end] (seconds), at most ``fps`` per second, at most one per frame."""
    start = request.start or 0.0
    if start >= info.duration:
        raise UserError(f"--start {start:g}s is past the end of the video ({info.duration:.2f}s)")
    end = min(request.end, info.duration) if request.end is not None else info.duration
    span = end - start
    count = request.num_frames
    if request.fps is not None:
        count = min(count, max(1, math.floor(span * request.fps)))
    count = min(count, max(1, math.floor(span * info.fps)))  # no more samples than frames in the span
    step = span / count
    return [start + (i + 0.5) * step for i in range(count)]


def frame_at(seconds: float, fps: float) -> int:
    """Number of the constant-rate frame shown at ``seconds`` (robust to 0.4 * 25 = 9.999...)."""
    return int(math.floor(seconds * fps + 1e-6))


def _resize(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = frame.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return frame
    scale = max_side / max(height, width)
    return cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)


class _OpenCVCannot(Exception):
    """OpenCV could not open or decode the requested frames; ffmpeg gets a go."""


# Without a keyframe probe, assume this many frames between keyframes (x264's default is 250).
DEFAULT_KEYFRAME_GAP = 250


def _opencv_exact(
    info: VideoInfo, times: list[float], max_side: int | None, keyframe_gap: float
) -> tuple[np.ndarray, list[int], list[float], str]:
    """Exact frames with OpenCV: seek per sample when samples are sparse, else one sequential pass.
    Returns RGB frames (T, H, W, 3), frame numbers, timestamps (s) and the strategy used."""
    capture = cv2.VideoCapture(info.path)
    if not capture.isOpened():
        raise _OpenCVCannot()
    wanted = [min(frame_at(t, info.fps), info.frame_count - 1) for t in times]
    spacing = (wanted[-1] - wanted[0]) / max(1, len(wanted) - 1)
    try:
        if info.variable_frame_rate:
            frames, indices, stamps = _opencv_by_timestamp(capture, times, max_side)
            strategy = "exact-sequential"
        elif spacing <= keyframe_gap:
            frames, indices, stamps = _opencv_sequential(capture, wanted, max_side)
            strategy = "exact-sequential"
        else:
            frames, indices, stamps = _opencv_seek(capture, wanted, max_side)
            strategy = "exact-seek"
    finally:
        capture.release()
    if len(frames) < len(times):
        raise _OpenCVCannot()
    return np.stack(frames)[..., ::-1], indices, stamps, strategy  # BGR -> RGB


def _opencv_seek(capture, wanted: list[int], max_side: int | None):
    frames, stamps = [], []
    for index in wanted:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, image = capture.read()
        if not ok:
            break
        frames.append(_resize(image, max_side))
        stamps.append(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
    return frames, wanted[: len(frames)], stamps


def _opencv_sequential(capture, wanted: list[int], max_side: int | None):
    """Constant frame rate: decode straight through from the first wanted frame, convert only the
    wanted ones (``grab`` decodes, ``retrieve`` converts)."""
    frames, stamps = [], []
    if wanted[0] > 0:
        capture.set(cv2.CAP_PROP_POS_FRAMES, wanted[0])
    position, image = wanted[0], None
    for index in wanted:
        while position <= index:
            if not capture.grab():
                return frames, wanted[: len(frames)], stamps
            if position == index:
                ok, image = capture.retrieve()
                if not ok:
                    return frames, wanted[: len(frames)], stamps
                image = _resize(image, max_side)
            position += 1
        frames.append(image)  # a repeated index reuses the frame just converted
        stamps.append(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
    return frames, wanted, stamps


def _opencv_by_timestamp(capture, times: list[float], max_side: int | None):
    """Variable frame rate: walk every frame and keep, for each time, the frame shown then (the last
    one whose timestamp is <= the time). Frame numbers count decoded frames."""
    frames, indices, stamps = [], [], []
    pending = list(times)
    shown = None  # (image, index, timestamp) of the frame on screen at the current position
    position = 0
    while pending and capture.grab():
        stamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        while pending and shown is not None and stamp > pending[0]:
            frames.append(shown[0]); indices.append(shown[1]); stamps.append(shown[2])
            pending.pop(0)
        if pending:
            ok, image = capture.retrieve()
            if ok:
                shown = (_resize(image, max_side), position, stamp)
        position += 1
    while pending and shown is not None:  # times after the last frame's timestamp
        frames.append(shown[0]); indices.append(shown[1]); stamps.append(shown[2])
        pending.pop(0)
    return frames, indices, stamps


def _output_size(info: VideoInfo, max_side: int | None) -> tuple[int, int]:
    width, height = info.width, info.height
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = max(2, round(width * scale)), max(2, round(height * scale))
    return width - width % 2, height - height % 2


def _ffmpeg_rawvideo(stream, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    try:
        out, _ = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough").run(
            cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True, quiet=True
        )
    except ffmpeg.Error as error:
        raise UserError(f"ffmpeg could not decode the video: {error.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    return np.frombuffer(out, dtype=np.uint8).reshape(-1, height, width, 3)


def _ffmpeg_keyframes(info: VideoInfo, seek_times: list[float], max_side: int | None) -> np.ndarray:
    """Decode the keyframe at each of ``seek_times`` (exact keyframe timestamps): one input per
    sample, each seeking straight to its keyframe and keeping one frame, concatenated."""
    size = _output_size(info, max_side)
    frames = []
    for batch_start in range(0, len(seek_times), FFMPEG_INPUTS_PER_PROCESS):
        streams = [
            ffmpeg.input(info.path, ss=f"{t:.6f}", threads=1).video.trim(end_frame=1).filter("scale", *size).filter("setsar", 1)
            for t in seek_times[batch_start: batch_start + FFMPEG_INPUTS_PER_PROCESS]
        ]
        joined = streams[0] if len(streams) == 1 else ffmpeg.concat(*streams, v=1, a=0)
        frames.append(_ffmpeg_rawvideo(joined, size))
    return np.concatenate(frames)


FFMPEG_INPUTS_PER_PROCESS = 64


def _ffmpeg_sequential(info: VideoInfo, times: list[float], max_side: int | None) -> tuple[np.ndarray, list[float]]:
    """Decode every frame of [first, last] sample with ffmpeg, keep the one shown at each time."""
    size = _output_size(info, max_side)
    start = max(0.0, times[0] - 1.0 / info.fps)
    stream = ffmpeg.input(info.path, ss=f"{start:.6f}").video.filter("scale", *size).filter("setsar", 1)
    stream = stream.filter("trim", end=times[-1] - start + 1.0 / info.fps)
    # output frames at a fixed rate starting at `start`: frame k shows time start + k / fps
    stream = stream.filter("fps", fps=info.fps, start_time=0)
    decoded = _ffmpeg_rawvideo(stream, size)
    if len(decoded) == 0:
        raise UserError(f"{info.path}: no frame could be decoded (truncated or corrupt?)")
    picks = [min(len(decoded) - 1, frame_at(t - start, info.fps)) for t in times]
    return decoded[picks], [start + k / info.fps for k in picks]


def read_frames(path: str | Path, request: SamplingRequest, info: VideoInfo | None = None) -> tuple[VideoInfo, SampledFrames]:
    """Probe ``path`` and return the sampled frames (RGB, rotation applied) with their provenance."""
    began = time.perf_counter()
    info = info or probe(path)
    times = sample_times(info, request)
    keyframe_interval = None
    keyframe_gap = DEFAULT_KEYFRAME_GAP
    if not request.exact and len(times) > 1:
        keys = keyframe_times(info.path)
        if len(keys) > 1:
            keyframe_interval = (keys[-1] - keys[0]) / (len(keys) - 1)
            keyframe_gap = keyframe_interval * info.fps
            if times[1] - times[0] >= keyframe_interval:
                nearest = [min(keys, key=lambda k: abs(k - t)) for t in times]
                pixels = _ffmpeg_keyframes(info, nearest, request.max_side)
                if len(pixels) == len(times):
                    return info, SampledFrames(
                        pixels, [round(k * info.fps) for k in nearest], nearest, times, "keyframe", "ffmpeg",
                        time.perf_counter() - began, keyframe_interval,
                    )
    try:
        pixels, indices, stamps, strategy = _opencv_exact(info, times, request.max_side, keyframe_gap)
        backend = "opencv"
    except _OpenCVCannot:
        pixels, stamps = _ffmpeg_sequential(info, times, request.max_side)
        indices, strategy, backend = [round(s * info.fps) for s in stamps], "exact-sequential", "ffmpeg"
    return info, SampledFrames(
        pixels, indices, stamps, times, strategy, backend, time.perf_counter() - began, keyframe_interval
    )
