"""Sample frames from a video file (or a folder of frames): the one entry point the commands use.

- exact: for each sample time, the frame a player shows then (the last frame whose pts is at or
  before it).
- keyframe (fast): the keyframe shown nearest each sample time, decoded alone; off by at most half a
  keyframe interval. ``seek="auto"`` picks it when samples are at least one keyframe interval apart.

Every returned frame carries its position in presentation order and its pts (seconds from the first
frame), both from the frame index, never from an average frame rate.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from .decode import decode_positions
from .probe import VideoInfo, probe
from .sampling import SamplingRequest, sample_times


@dataclass
class SampledFrames:
    pixels: np.ndarray  # (T, H, W, 3) uint8 RGB, as displayed
    indices: list[int]  # position of each returned frame in presentation order
    timestamps: list[float]  # seconds from the first frame: each returned frame's pts
    requested: list[float]  # seconds, the segment centres that were asked for
    seek: str  # "exact" | "keyframe"
    backend: str  # "pyav" | "images"
    seconds: float = 0.0  # wall time spent decoding
    keyframe_interval: float | None = None  # seconds, mean, when there are several keyframes

    def summary(self) -> dict:
        """Everything but the pixels, for --json and --verbose."""
        data = {k: v for k, v in asdict(self).items() if k != "pixels"}
        data["shape"] = list(self.pixels.shape)
        return data


def output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so the longer side is at most ``max_side``; the same in every mode."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def sized_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An OpenCV image (H, W, 3) BGR as RGB of ``size`` = (width, height), shrunk by area averaging
    where it differs."""
    if size != (image.shape[1], image.shape[0]):
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image[..., ::-1]


def read_frames(path: str | Path, request: SamplingRequest, info: VideoInfo | None = None) -> tuple[VideoInfo, SampledFrames]:
    """Probe ``path`` (unless ``info`` is given) and return the sampled frames (RGB, rotation
    applied) with their provenance. A folder of image frames is read as a video."""
    if info is None and frame_files(Path(path)):
        return read_frame_folder(Path(path), request)
    began = time.perf_counter()
    info = info or probe(path)
    index = info.index

    def frames_in(start: float, end: float) -> int:
        return int(np.searchsorted(index.seconds, end, side="left") - np.searchsorted(index.seconds, start, side="left"))

    times = sample_times(info.duration, frames_in, request)
    keys = info.keyframes
    keyframe_interval = (keys[-1] - keys[0]) / (len(keys) - 1) if len(keys) > 1 else None
    spacing = times[1] - times[0] if len(times) > 1 else float("inf")
    use_keyframes = request.seek == "keyframe" or (
        request.seek == "auto" and keyframe_interval is not None and spacing >= keyframe_interval
    )
    if use_keyframes:
        wanted = [index.nearest_keyframe(t) for t in times]
    else:
        wanted = [index.shown_at(t) for t in times]
    size = output_size(info.width, info.height, request.max_side)
    pixels, positions = decode_positions(info, wanted, size, keyframes_only=use_keyframes)
    return info, SampledFrames(
        pixels, positions, [float(index.seconds[p]) for p in positions], times, "keyframe" if use_keyframes else "exact",
        "pyav", time.perf_counter() - began, keyframe_interval,
    )


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# A folder of frames carries no frame rate; MVBench's, the one benchmark that ships them, are 3 fps.
FRAME_FOLDER_FPS = 3.0


def frame_files(path: Path) -> list[Path]:
    """The image files of a folder of frames, sorted; none for anything else (probing says why)."""
    try:
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else []
    except OSError:  # a name too long, no permission: check_path reports it
        return []


def read_frame_folder(path: Path, request: SamplingRequest) -> tuple[VideoInfo, SampledFrames]:
    """A folder of image frames (sorted by name) taken as a FRAME_FOLDER_FPS video."""
    began = time.perf_counter()
    files = frame_files(path)
    first = cv2.imread(str(files[0]))
    if first is None:
        raise UserError(f"{files[0]} is not a readable image")
    info = VideoInfo(str(path), first.shape[1], first.shape[0], FRAME_FOLDER_FPS, len(files), len(files) / FRAME_FOLDER_FPS,
                     0, False, "images")

    def frames_in(start: float, end: float) -> int:
        return int(np.ceil(end * FRAME_FOLDER_FPS) - np.ceil(start * FRAME_FOLDER_FPS))

    times = sample_times(info.duration, frames_in, request)
    indices = [min(int(t * FRAME_FOLDER_FPS + 1e-6), len(files) - 1) for t in times]
    size = output_size(info.width, info.height, request.max_side)
    frames = []
    for index in indices:
        image = cv2.imread(str(files[index]))
        if image is None:
            raise UserError(f"{files[index]} is not a readable image")
        if image.shape[:2] != first.shape[:2]:
            raise UserError(f"the frames in {path} differ in size ({files[0].name}: {first.shape[1]}x{first.shape[0]}, "
                            f"{files[index].name}: {image.shape[1]}x{image.shape[0]}); they must be one video's frames")
        frames.append(sized_rgb(image, size))
    return info, SampledFrames(np.stack(frames), indices, [i / FRAME_FOLDER_FPS for i in indices], times, "exact", "images",
                               time.perf_counter() - began)
