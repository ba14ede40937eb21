"""Decoding benchmark: sample 32 and 128 frames from 10- and 60-minute 1280x720 H.264 videos.

Compares crosslmm's exact and fast (nearest-keyframe) modes with plain PyAV (seek before each
sample and decode up to it; seek to each nearest keyframe and decode it), OpenCV's
``CAP_PROP_POS_FRAMES`` seeking and decord (when installed: ``pip install decord``), in the same
process on the same files, the systems alternated within each repeat (A, B, C, A, B, C, ...).

    python benchmarks/decode_benchmark.py --repeats 3    # writes benchmarks/results/decode_<host>.json

Targets (issue 10, 2-core machine): fast >= 5x faster than the fastest exact peer; exact no slower
than 1.2x the fastest exact peer; fast no slower than PyAV seeking to the same keyframes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crosslmm_cli.synthetic_video import write_test_pattern  # noqa: E402
from crosslmm_cli.video import SamplingRequest, probe, read_frames  # noqa: E402

HERE = Path(__file__).resolve().parent


def pyav_exact(path: str, times: list[float]) -> np.ndarray:
    """Seek to the keyframe before each time and decode up to the frame shown at that time."""
    import av

    frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for t in times:
            container.seek(int(t / stream.time_base), stream=stream, backward=True)
            shown = None
            for frame in container.decode(stream):
                if frame.time > t + 1e-6:
                    break
                shown = frame
            frames.append((shown or frame).to_ndarray(format="rgb24"))
    return np.stack(frames)


def pyav_keyframes(path: str, keyframe_times: list[float]) -> np.ndarray:
    """Seek to each keyframe and decode its first frame: what fast mode does, written plainly."""
    import av

    frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        for t in keyframe_times:
            container.seek(round(t / stream.time_base), stream=stream, backward=True)
            frames.append(next(container.decode(stream)).to_ndarray(format="rgb24"))
    return np.stack(frames)


def decord_exact(path: str, indices: list[int]) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    return reader.get_batch(indices).asnumpy()


def opencv_seek(path: str, indices: list[int]) -> np.ndarray:
    capture = cv2.VideoCapture(path)
    frames = []
    for index in indices:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, image = capture.read()
        frames.append(image[..., ::-1])
    capture.release()
    return np.stack(frames)


def alternated(systems: dict, repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds of each system, the systems run in turn within every repeat."""
    seconds: dict[str, list[float]] = {name: [] for name in systems}
    outputs = {}
    for _ in range(repeats):
        for name, function in systems.items():
            began = time.perf_counter()
            outputs[name] = function()
            seconds[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in seconds.items()}, outputs


def available(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", type=Path, default=HERE / "results" / f"decode_{platform.node() or 'host'}.json")
    args = parser.parse_args()

    results = []
    for minutes in args.minutes:
        path = HERE / "data" / f"h264_720p_{minutes}min.mp4"
        if not path.exists():
            print(f"writing {path} ...", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_test_pattern(path, minutes * 60)
        info = probe(path)
        for count in args.frames:
            index = info.index
            exact_times = read_frames(path, SamplingRequest(num_frames=count, seek="exact"), info)[1].requested
            keyframes = [info.start_time + index.seconds[index.nearest_keyframe(t)] for t in exact_times]
            positions = [index.shown_at(t) for t in exact_times]  # OpenCV and decord count frames
            systems = {
                "crosslmm-exact": lambda: read_frames(path, SamplingRequest(num_frames=count, seek="exact"))[1],
                "crosslmm-fast": lambda: read_frames(path, SamplingRequest(num_frames=count, seek="keyframe"))[1],
                "pyav": lambda: pyav_exact(str(path), [info.start_time + t for t in exact_times]),
                "pyav-keyframes": lambda: pyav_keyframes(str(path), keyframes),
                "opencv-pos-frames": lambda: opencv_seek(str(path), positions),
            }
            if available("decord"):
                systems["decord"] = lambda: decord_exact(str(path), positions)
            seconds, outputs = alternated(systems, args.repeats)
            row = {"video_minutes": minutes, "frames": count, "seconds": {k: round(v, 3) for k, v in seconds.items()}}
            for name, value in seconds.items():
                print(f"{minutes:>3} min {count:>4} frames {name:<18} {value:7.2f} s", flush=True)
            fastest_peer = min(seconds[n] for n in ("pyav", "decord", "opencv-pos-frames") if n in seconds)
            row["fastest_exact_peer_s"] = round(fastest_peer, 3)
            row["fast_speedup_vs_fastest_peer"] = round(fastest_peer / seconds["crosslmm-fast"], 2)
            row["exact_ratio_vs_fastest_peer"] = round(seconds["crosslmm-exact"] / fastest_peer, 2)
            row["fast_ratio_vs_pyav_keyframes"] = round(seconds["crosslmm-fast"] / seconds["pyav-keyframes"], 2)
            row["exact_max_abs_diff_vs_pyav"] = int(np.abs(outputs["crosslmm-exact"].pixels.astype(np.int16)
                                                         - outputs["pyav"].astype(np.int16)).max())
            row["fast_max_abs_diff_vs_pyav_keyframes"] = int(np.abs(outputs["crosslmm-fast"].pixels.astype(np.int16)
                                                                  - outputs["pyav-keyframes"].astype(np.int16)).max())
            results.append(row)

    summary = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "opencv": cv2.__version__},
        "targets": {"fast_speedup_vs_fastest_peer": ">= 5", "exact_ratio_vs_fastest_peer": "<= 1.2",
                    "fast_ratio_vs_pyav_keyframes": "<= 1"},
        "command": "python " + " ".join(sys.argv),
        "results": results,
    }
    for module in ("av", "decord"):  # av is a dependency now; decord only when installed
        if available(module):
            summary["machine"][module] = __import__(module).__version__
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
