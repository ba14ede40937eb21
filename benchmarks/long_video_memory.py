"""Peak resident memory of `crosslmm ask` on a long video, per frame, against the floor (issue 36).

A 60-minute video (generated: 640x360, 5 fps, H.264) and a `crosslmm init small --random` checkpoint
(fp32, CPU); `crosslmm ask --json` at each frame count in its own process, its peak resident set
read by GNU time. The **floor** is what a question must keep per frame after the prefill: the T2V
keys and values of every cross-attention layer (and the LLM cache of the pooled tokens), from the
config. The memory per frame is the slope between the two largest frame counts (the model's own
weights cancel). The greedy answer tokens are recorded so that a change of the encoding path can be
shown to answer the same.

    python benchmarks/long_video_memory.py --frames 32 256 1024 --label after

writes (adds its label to) benchmarks/results/long_video_memory_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from crosslmm_cli.synthetic_video import ffmpeg_exe  # noqa: E402

WORK = HERE / "synthetic" / "work" / "long_video"


def long_video(path: Path, minutes: int) -> Path:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=5:duration={60 * minutes}",
                        "-c:v", "libx264", "-preset", "veryfast", "-g", "50", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def small_checkpoint(path: Path) -> Path:
    if not (path / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "crosslmm_cli.app", "init", "small", str(path), "--random"], check=True,
                       capture_output=True)
    return path


def floor_bytes_per_frame(checkpoint: Path) -> int:
    """T2V keys and values of every cross-attention layer for one frame's original tokens, plus the
    LLM cache of its pooled tokens."""
    from crosslmm.configuration import CrossLMMConfig

    config = CrossLMMConfig.from_pretrained(checkpoint)
    text = config.text_config
    head = text.hidden_size // text.num_attention_heads
    kv_width = text.num_key_value_heads * head
    t2v = len(config.cross_attn_layers) * 2 * config.vision_grid**2 * kv_width * 4
    llm = text.num_hidden_layers * 2 * config.tokens_per_frame * kv_width * 4
    return t2v + llm


def ask(video: Path, checkpoint: Path, frames: int) -> dict:
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "crosslmm_cli.app", "ask", str(video),
                           "What is shown?", "--model", str(checkpoint), "--frames", str(frames), "--device", "cpu",
                           "--max-new-tokens", "8", "--json"], capture_output=True, text=True,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    seconds = re.search(r"Elapsed \(wall clock\) time .*: (.+)", done.stderr).group(1)
    answer = json.loads(done.stdout)
    return {"frames": frames, "peak_rss_mb": round(peak_kb / 1024, 1), "wall": seconds.strip(), "answer": answer["answer"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--label", default="now", help="the name these measurements are kept under (before, after, ...)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "long_video_memory_cpu.json")
    args = parser.parse_args()
    video = long_video(WORK / f"testsrc_{args.minutes}min.mp4", args.minutes)
    checkpoint = small_checkpoint(WORK / "small")
    runs = []
    for frames in args.frames:
        runs.append(ask(video, checkpoint, frames))
        print(json.dumps(runs[-1]), flush=True)
    floor = floor_bytes_per_frame(checkpoint) / 2**20
    a, b = runs[-2], runs[-1]
    per_frame = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["frames"] - a["frames"])
    report = json.loads(args.output.read_text()) if args.output.is_file() else {}
    report.update({
        "video": f"{args.minutes} minutes, 640x360, 5 fps, H.264 (ffmpeg testsrc2)",
        "model": "crosslmm init small --random (fp32, CPU)",
        "floor_mb_per_frame": round(floor, 3),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), {os.cpu_count()} cores",
    })
    report.setdefault("runs", {})[args.label] = {
        "runs": runs, "mb_per_frame": round(per_frame, 3), "times_the_floor": round(per_frame / floor, 2),
        "command": "python benchmarks/long_video_memory.py " + " ".join(sys.argv[1:]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["runs"][args.label], indent=1))


if __name__ == "__main__":
    main()
