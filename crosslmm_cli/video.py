"""Decode a local video and sample frames from it.

Samples are segment centres in time over [start, end]. Two ways to get them:

- exact (OpenCV): for each sample, either decode straight on from the previous one or seek
  (``CAP_PROP_POS_FRAMES``, which decodes from the keyframe before it), whichever decodes fewer
  frames given the keyframe positions; so sparse samples seek and dense ones stream. Variable-frame-
  rate files are walked frame by frame and sampled by timestamp.
- keyframe (fast): the nearest keyframe to each sample, decoded alone; off by at most half a
  keyframe interval. H.264 in MP4/MOV: the keyframes' bytes, found in the sample tables, go to one
  ffmpeg decoder as a raw stream; otherwise ffmpeg processes with one seeking input per keyframe.
  Chosen automatically (``seek="auto"``) when samples are at least one keyframe interval apart.

ffmpeg (the binary imageio-ffmpeg ships, through ffmpeg-python) also probes the file and decodes
what OpenCV cannot open. Every problem a user can cause raises :class:`UserError`.
"""

from __future__ import annotations

import bisect
import math
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import ffmpeg
import imageio_ffmpeg
import numpy as np

from . import mp4_index
from .errors import UserError


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped in the imageio-ffmpeg wheel: `pip install` alone sets a machine up."""
    return imageio_ffmpeg.get_ffmpeg_exe()


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
    keyframes: list[float] = field(default_factory=list, repr=False)  # presentation times (s)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "keyframes"}


@dataclass
class SampledFrames:
    pixels: np.ndarray  # (T, H, W, 3) uint8 RGB
    indices: list[int]  # frame numbers (for fast mode: the keyframe's)
    timestamps: list[float]  # seconds, presentation time of each returned frame
    requested: list[float]  # seconds, the segment centres that were asked for
    seek: str  # "exact" | "exact-by-timestamp" | "keyframe"
    backend: str  # "opencv" | "ffmpeg"
    seconds: float = 0.0  # wall time spent decoding
    keyframe_interval: float | None = None  # seconds, mean, when it was probed

    def summary(self) -> dict:
        """Everything but the pixels, for --json and --verbose."""
        data = {k: v for k, v in asdict(self).items() if k != "pixels"}
        data["shape"] = list(self.pixels.shape)
        return data


SEEK_MODES = ("auto", "exact", "keyframe")


@dataclass
class SamplingRequest:
    num_frames: int = 32  # frames to sample (segment centres)
    fps: float | None = None  # at most this many frames per second of the span
    start: float | None = None  # seconds
    end: float | None = None  # seconds
    seek: str = "auto"  # "auto" | "exact" | "keyframe"
    max_side: int | None = None  # downscale so the longer side is at most this (saves memory)

    def __post_init__(self):
        if self.seek not in SEEK_MODES:
            raise UserError(f"--seek must be one of {', '.join(SEEK_MODES)}, got {self.seek!r}")
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
        raise UserError(f"{path} is a directory with no image frames; give a video file or a folder of frames")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes); it is not a video")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror}); check its permissions") from None
    return path


def _packet_listing(path: str | Path) -> tuple[str, str]:
    """One ffmpeg run (ffprobe is not shipped) that copies the video packets, without decoding, to a
    framecrc listing on stdout; ffmpeg describes the input on stderr. (``-discard nokey`` would be
    faster but gives wrong timestamps for MP4 keyframes with B-frames; MP4 goes through mp4_index.)"""
    args = [ffmpeg_exe(), "-hide_banner", "-nostats", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"]
    result = subprocess.run(args, capture_output=True, text=True, errors="replace")
    return result.stderr, result.stdout


def _listing_times(listing: str, keyframes_only: bool) -> list[float]:
    """Sorted presentation times (s) from a framecrc listing: stream, dts, pts, duration, size,
    hash[, F=flags] per packet, the flags printed only when they differ from "keyframe"."""
    timebase = re.search(r"#tb 0: (\d+)/(\d+)", listing)
    if timebase is None:
        return []
    scale = int(timebase.group(1)) / int(timebase.group(2))
    times = []
    for line in listing.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = [field.strip() for field in line.split(",")]
        flags = next((int(f[2:], 16) for f in fields[6:] if f.startswith("F=")), 1)
        if flags & 1 or not keyframes_only:
            times.append(int(fields[2]) * scale)
    return sorted(times)


def packet_times(path: str | Path) -> list[float]:
    """Presentation times (s) of every video packet, from the container (sorted)."""
    return _listing_times(_packet_listing(path)[1], keyframes_only=False)


def probe(path: str | Path) -> VideoInfo:
    """Validate ``path`` and describe its first video stream; :class:`UserError` when it is not a
    readable video (missing, empty, not a video, truncated, audio only, no frames)."""
    path = check_path(path)
    keyframes = mp4_index.keyframe_times(path)  # milliseconds for MP4/MOV; ffmpeg walks every sample
    if keyframes is None:
        text, listing = _packet_listing(path)
        keyframes = _listing_times(listing, keyframes_only=True)
    else:
        text = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                              errors="replace").stderr
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
        keyframes=keyframes,
    )


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


# Without keyframe positions, assume x264's default keyframe interval (frames).
DEFAULT_KEYFRAME_GAP = 250
# OpenCV's CAP_PROP_POS_FRAMES seek starts decoding at the keyframe before (target - 16).
OPENCV_SEEK_BACKOFF = 16


def _opencv_exact(
    info: VideoInfo, times: list[float], max_side: int | None, keyframes: list[int]
) -> tuple[np.ndarray, list[int], list[float], str]:
    """Exact frames with OpenCV. Returns RGB frames (T, H, W, 3), frame numbers, timestamps (s) and
    the strategy used."""
    capture = cv2.VideoCapture(info.path)
    if not capture.isOpened():
        raise _OpenCVCannot()
    try:
        if info.variable_frame_rate:
            frames, indices, stamps = _opencv_by_timestamp(capture, times, max_side)
            strategy = "exact-by-timestamp"
        else:
            wanted = [min(frame_at(t, info.fps), info.frame_count - 1) for t in times]
            frames, indices, stamps = _opencv_by_index(capture, wanted, max_side, keyframes)
            strategy = "exact"
    finally:
        capture.release()
    if len(frames) < len(times):
        raise _OpenCVCannot()
    return np.stack(frames)[..., ::-1], indices, stamps, strategy  # BGR -> RGB


def _opencv_by_index(capture, wanted: list[int], max_side: int | None, keyframes: list[int]):
    """Constant frame rate: for each wanted frame, decode on from the current position or seek,
    whichever decodes fewer frames. ``grab`` decodes; only wanted frames are converted."""
    frames, stamps = [], []
    position, image = 0, None  # position: number of the next frame grab() returns
    for index in wanted:
        if index != position - 1 or image is None:  # not the frame converted just before
            reach = _keyframe_before(max(0, index - OPENCV_SEEK_BACKOFF), keyframes)
            if index < position or index - position > index - reach:
                capture.set(cv2.CAP_PROP_POS_FRAMES, index)
                position = index
            while position <= index:
                if not capture.grab():
                    return frames, wanted[: len(frames)], stamps
                position += 1
            ok, image = capture.retrieve()
            if not ok:
                return frames, wanted[: len(frames)], stamps
            image = _resize(image, max_side)
        frames.append(image)
        stamps.append(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
    return frames, wanted, stamps


def _keyframe_before(index: int, keyframes: list[int]) -> int:
    """The last keyframe at or before ``index`` (keyframes sorted; assumed every
    DEFAULT_KEYFRAME_GAP frames when unknown)."""
    if not keyframes:
        return index - index % DEFAULT_KEYFRAME_GAP
    return keyframes[max(0, bisect.bisect_right(keyframes, index) - 1)]


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


def _yuv_command(stream) -> list[str]:
    # I420 is half the bytes of RGB and skips ffmpeg's RGB conversion; OpenCV converts faster
    return stream.output("pipe:", format="rawvideo", pix_fmt="yuv420p", fps_mode="passthrough").compile(
        cmd=[ffmpeg_exe(), "-v", "error"]
    )


def _yuv_frames(raw: bytes, size: tuple[int, int]) -> list[np.ndarray]:
    """I420 bytes -> RGB frames (H, W, 3)."""
    width, height = size
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(-1, height * 3 // 2, width)
    return [cv2.cvtColor(plane, cv2.COLOR_YUV2RGB_I420) for plane in planes]


# Inputs per ffmpeg process in keyframe mode; processes run side by side, one per core.
FFMPEG_INPUTS_PER_PROCESS = 48


def _ffmpeg_keyframes(info: VideoInfo, seek_times: list[float], max_side: int | None) -> np.ndarray | None:
    """Decode the keyframe at each of ``seek_times`` (exact keyframe timestamps, repeats allowed),
    each distinct keyframe once: by :func:`_h264_keyframes` where it applies, else by
    :func:`_seeking_keyframes`. None when ffmpeg could not give every frame."""
    size = _output_size(info, max_side)
    distinct = sorted(set(seek_times))
    decoded = _h264_keyframes(info, distinct, size) or _seeking_keyframes(info, distinct, size)
    if len(decoded) != len(distinct):
        return None
    position = {t: i for i, t in enumerate(distinct)}
    return np.stack([decoded[position[t]] for t in seek_times])


def _seeking_keyframes(info: VideoInfo, times: list[float], size: tuple[int, int]) -> list[np.ndarray]:
    """Each keyframe is one ffmpeg input that seeks straight to it and keeps one frame; the inputs
    are split over one process per core."""
    per_process = max(1, min(FFMPEG_INPUTS_PER_PROCESS, math.ceil(len(times) / (os.cpu_count() or 1))))
    commands = []
    for first in range(0, len(times), per_process):
        streams = [
            # seek a quarter frame past the keyframe without accurate seeking: ffmpeg starts at the
            # keyframe at or before it and decodes nothing else; a small probe, as every input is
            # the same, already identified file
            ffmpeg.input(info.path, ss=f"{t + 0.25 / info.fps:.6f}", noaccurate_seek=None, threads=1,
                         probesize=32768, analyzeduration=0)
            .video.trim(end_frame=1).filter("scale", *size).filter("setsar", 1)
            for t in times[first: first + per_process]
        ]
        commands.append(_yuv_command(streams[0] if len(streams) == 1 else ffmpeg.concat(*streams, v=1, a=0)))
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for c in commands]
    return [frame for process in processes for frame in _yuv_frames(process.communicate()[0], size)]


def _h264_keyframes(info: VideoInfo, times: list[float], size: tuple[int, int]) -> list[np.ndarray] | None:
    """The H.264 keyframes at ``times`` of an MP4/MOV, read from the file by the sample tables and
    decoded by one ffmpeg process; None where that does not apply (other codecs or containers,
    rotated video) or ffmpeg did not return one frame per keyframe."""
    if info.rotation:  # a raw stream carries no display matrix; the per-input path rotates
        return None
    stream = mp4_index.h264_keyframe_stream(info.path, times)
    if stream is None:
        return None
    command = [ffmpeg_exe(), "-v", "error", "-f", "h264", "-i", "pipe:", "-vf", f"scale={size[0]}:{size[1]},setsar=1",
               "-f", "rawvideo", "-pix_fmt", "yuv420p", "-fps_mode", "passthrough", "pipe:"]
    result = subprocess.run(command, input=stream, capture_output=True, check=False)
    decoded = _yuv_frames(result.stdout, size)
    return decoded if result.returncode == 0 and len(decoded) == len(times) else None


def _ffmpeg_sequential(info: VideoInfo, times: list[float], max_side: int | None) -> tuple[np.ndarray, list[float]]:
    """Decode every frame of [first, last] sample with ffmpeg, keep the one shown at each time."""
    size = _output_size(info, max_side)
    start = max(0.0, times[0] - 1.0 / info.fps)
    stream = ffmpeg.input(info.path, ss=f"{start:.6f}").video.filter("scale", *size).filter("setsar", 1)
    stream = stream.filter("trim", end=times[-1] - start + 1.0 / info.fps)
    # output frames at a fixed rate starting at `start`: frame k shows time start + k / fps
    stream = stream.filter("fps", fps=info.fps, start_time=0)
    result = subprocess.run(_yuv_command(stream), capture_output=True)
    decoded = _yuv_frames(result.stdout, size)
    if len(decoded) == 0:
        raise UserError(f"{info.path}: no frame could be decoded (truncated or corrupt?)")
    picks = [min(len(decoded) - 1, frame_at(t - start, info.fps)) for t in times]
    return np.stack([decoded[k] for k in picks]), [start + k / info.fps for k in picks]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# A folder of frames carries no frame rate; MVBench's, the one benchmark that ships them, are 3 fps.
FRAME_FOLDER_FPS = 3.0


def frame_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else []


def read_frame_folder(path: Path, request: SamplingRequest) -> tuple[VideoInfo, SampledFrames]:
    """A folder of image frames (sorted by name) taken as a FRAME_FOLDER_FPS video."""
    began = time.perf_counter()
    files = frame_files(path)
    first = cv2.imread(str(files[0]))
    if first is None:
        raise UserError(f"{files[0]} is not a readable image")
    info = VideoInfo(str(path), first.shape[1], first.shape[0], FRAME_FOLDER_FPS, len(files), len(files) / FRAME_FOLDER_FPS,
                     0, False, "images")
    times = sample_times(info, request)
    indices = [min(frame_at(t, info.fps), len(files) - 1) for t in times]
    frames = []
    for index in indices:
        image = cv2.imread(str(files[index]))
        if image is None:
            raise UserError(f"{files[index]} is not a readable image")
        frames.append(_resize(image, request.max_side)[..., ::-1])
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise UserError(f"the frames in {path} differ in size ({sorted(sizes)}); they must be one video's frames")
    return info, SampledFrames(np.stack(frames), indices, [i / info.fps for i in indices], times, "exact", "images",
                               time.perf_counter() - began)


def read_frames(path: str | Path, request: SamplingRequest, info: VideoInfo | None = None) -> tuple[VideoInfo, SampledFrames]:
    """Probe ``path`` (unless ``info`` is given) and return the sampled frames (RGB, rotation
    applied) with their provenance. A folder of image frames is read as a video."""
    if info is None and frame_files(Path(path)):
        return read_frame_folder(Path(path), request)
    began = time.perf_counter()
    info = info or probe(path)
    times = sample_times(info, request)
    keys = info.keyframes
    keyframe_interval = (keys[-1] - keys[0]) / (len(keys) - 1) if len(keys) > 1 else None
    spacing = times[1] - times[0] if len(times) > 1 else math.inf
    use_keyframes = keys and (
        request.seek == "keyframe" or (request.seek == "auto" and keyframe_interval and spacing >= keyframe_interval)
    )
    if use_keyframes:
        nearest = [keys[_nearest(keys, t)] for t in times]
        pixels = _ffmpeg_keyframes(info, nearest, request.max_side)
        if pixels is not None:
            return info, SampledFrames(
                pixels, [frame_at(k, info.fps) for k in nearest], nearest, times, "keyframe", "ffmpeg",
                time.perf_counter() - began, keyframe_interval,
            )
    try:
        keyframe_numbers = [frame_at(k, info.fps) for k in keys]
        pixels, indices, stamps, strategy = _opencv_exact(info, times, request.max_side, keyframe_numbers)
        backend = "opencv"
    except _OpenCVCannot:
        pixels, stamps = _ffmpeg_sequential(info, times, request.max_side)
        indices, strategy, backend = [frame_at(s, info.fps) for s in stamps], "exact", "ffmpeg"
    return info, SampledFrames(
        pixels, indices, stamps, times, strategy, backend, time.perf_counter() - began, keyframe_interval
    )


def _nearest(sorted_values: list[float], value: float) -> int:
    right = bisect.bisect_left(sorted_values, value)
    if right == 0:
        return 0
    if right == len(sorted_values):
        return right - 1
    return right if sorted_values[right] - value < value - sorted_values[right - 1] else right - 1
