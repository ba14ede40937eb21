"""Decoding benchmark: sample 32 and 128 frames from 10- and 60-minute 1280x720 H.264 videos.

Compares crosslmm's exact and fast (nearest-keyframe) modes with PyAV and decord (exact frames) and
OpenCV's plain ``CAP_PROP_POS_FRAMES`` seeking, in the same process on the same files. PyAV and
decord are peers, not dependencies: install them to include them (``pip install av decord``).

    python benchmarks/decode_benchmark.py            # writes benchmarks/results/decode_<host>.json

Targets (DESIGN.md, 2-core machine): fast >= 5x faster than the fastest exact peer; exact no
slower than 1.2x the fastest exact peer.
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
from crosslmm_cli.video import SamplingRequest, frame_at, probe, read_frames, sample_times  # noqa: E402

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


def timed(function, repeats: int) -> tuple[float, object]:
    seconds, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds), result


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
            times = sample_times(info, SamplingRequest(num_frames=count))
            indices = [frame_at(t, info.fps) for t in times]
            systems = {
                "crosslmm-exact": lambda: read_frames(path, SamplingRequest(num_frames=count, seek="exact"))[1],
                "crosslmm-fast": lambda: read_frames(path, SamplingRequest(num_frames=count, seek="keyframe"))[1],
                "opencv-pos-frames": lambda: opencv_seek(str(path), indices),
            }
            if available("av"):
                systems["pyav"] = lambda: pyav_exact(str(path), times)
            if available("decord"):
                systems["decord"] = lambda: decord_exact(str(path), indices)
            row = {"video_minutes": minutes, "frames": count, "seconds": {}, "strategy": {}}
            outputs = {}
            for name, function in systems.items():
                seconds, output = timed(function, args.repeats)
                row["seconds"][name] = round(seconds, 3)
                if hasattr(output, "seek"):
                    row["strategy"][name] = output.seek
                    output = output.pixels
                outputs[name] = output
                print(f"{minutes:>3} min {count:>4} frames {name:<18} {seconds:7.2f} s", flush=True)
            peers = [row["seconds"][n] for n in ("pyav", "decord", "opencv-pos-frames") if n in row["seconds"]]
            fastest_peer = min(peers)
            row["fastest_exact_peer_s"] = fastest_peer
            row["fast_speedup_vs_fastest_peer"] = round(fastest_peer / row["seconds"]["crosslmm-fast"], 2)
            row["exact_ratio_vs_fastest_peer"] = round(row["seconds"]["crosslmm-exact"] / fastest_peer, 2)
            reference = outputs.get("decord", outputs["opencv-pos-frames"])
            row["exact_mean_abs_diff_vs_reference"] = round(
                float(np.abs(outputs["crosslmm-exact"].astype(np.int16) - reference.astype(np.int16)).mean()), 3
            )
            results.append(row)

    summary = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "opencv": cv2.__version__},
        "targets": {"fast_speedup_vs_fastest_peer": ">= 5", "exact_ratio_vs_fastest_peer": "<= 1.2"},
        "command": "python " + " ".join(sys.argv),
        "results": results,
    }
    for module in ("av", "decord"):
        if available(module):
            summary["machine"][module] = __import__(module).__version__
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
