"""Write synthetic videos with the ffmpeg binary from imageio-ffmpeg (commands built by ffmpeg-python
where they have no pipe): for tests, benchmarks and demos.

Index-coded frames carry their own frame number as a 4x4 grid of black/white blocks (16 bits), so
a decoder's output can be checked frame by frame after lossy compression.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np

INDEX_BITS = 16


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped in the imageio-ffmpeg wheel: `pip install` alone sets a machine up."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def index_frame(index: int, height: int = 128, width: int = 128) -> np.ndarray:
    """(H, W, 3) uint8 frame whose 4x4 block grid spells ``index`` in binary (white = 1)."""
    bits = [(index >> bit) & 1 for bit in range(INDEX_BITS)]
    grid = np.array(bits, dtype=np.uint8).reshape(4, 4) * 255
    blocks = np.kron(grid, np.ones((height // 4, width // 4), dtype=np.uint8))
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[: blocks.shape[0], : blocks.shape[1]] = blocks[..., None]
    return frame


def read_index(frame: np.ndarray) -> int:
    """Inverse of :func:`index_frame` on a decoded (possibly resized) frame (H, W, 3)."""
    height, width = frame.shape[:2]
    gray = frame.mean(axis=2)
    value = 0
    for bit in range(INDEX_BITS):
        row, column = divmod(bit, 4)
        block = gray[row * height // 4 : (row + 1) * height // 4, column * width // 4 : (column + 1) * width // 4]
        inner = block[block.shape[0] // 4 : -block.shape[0] // 4 or None, block.shape[1] // 4 : -block.shape[1] // 4 or None]
        value |= int(inner.mean() > 127) << bit
    return value


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    size: tuple[int, int],
    fps: float = 25.0,
    codec: str = "libx264",
    keyframe_interval: int | None = None,
    extra_output_args: list[str] | None = None,
    extra_input_args: list[str] | None = None,
) -> Path:
    """Encode RGB frames (H, W, 3) of ``size`` = (width, height) to ``path`` (container from the suffix)."""
    width, height = size
    args = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-r", str(fps), *(extra_input_args or []), "-i", "pipe:", "-an", "-c:v", codec]
    if codec in ("libx264", "mpeg4", "libvpx-vp9", "libvpx"):
        args += ["-pix_fmt", "yuv420p"]
    if keyframe_interval:
        args += ["-g", str(keyframe_interval)]
        if codec == "libx264":
            args += ["-x264-params", f"keyint={keyframe_interval}:min-keyint={keyframe_interval}:scenecut=0"]
    if codec == "libx264":
        args += ["-preset", "ultrafast"]
    args += [*(extra_output_args or []), str(path)]
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    for frame in frames:
        process.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
    process.stdin.close()
    if process.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {process.stderr.read().decode(errors='replace')[-500:]}")
    return Path(path)


def index_frames(count: int, height: int = 128, width: int = 128) -> Iterator[np.ndarray]:
    for index in range(count):
        yield index_frame(index, height, width)


def moving_pattern_frames(count: int, height: int, width: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Cheap natural-ish content (a drifting gradient plus a moving square) for long benchmark videos."""
    rng = np.random.default_rng(seed)
    base = (np.add.outer(np.arange(height), np.arange(width)) % 256).astype(np.uint8)
    noise = rng.integers(0, 32, (height, width), dtype=np.uint8)
    for index in range(count):
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[..., 0] = base + index
        frame[..., 1] = noise + index // 2
        frame[..., 2] = base[::-1] - index
        top, left = (index * 7) % (height - 64), (index * 13) % (width - 64)
        frame[top : top + 64, left : left + 64] = 255
        yield frame


def write_test_pattern(
    path: str | Path, seconds: float, size: tuple[int, int] = (1280, 720), fps: float = 25.0, keyframe_interval: int = 250
) -> Path:
    """A long H.264 video of ffmpeg's moving ``testsrc2`` pattern, generated inside ffmpeg (no pipe)."""
    width, height = size
    source = ffmpeg.input(f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}", f="lavfi")
    output = source.output(str(path), vcodec="libx264", preset="ultrafast", pix_fmt="yuv420p", g=keyframe_interval,
                           **{"x264-params": f"keyint={keyframe_interval}:min-keyint={keyframe_interval}:scenecut=0"})
    output.overwrite_output().run(cmd=[ffmpeg_exe(), "-v", "error"])
    return Path(path)
