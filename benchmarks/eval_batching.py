"""`crosslmm eval` at batch size 1 and 8: questions per second, and identical scores.

A 64-question jsonl benchmark of our own format (16 synthetic videos, 4 questions each, 2 options),
the tiny model with its cross-attention gates open, saved as a checkpoint and loaded through the
users' path. Each run is a whole `crosslmm eval` (library entry point, a fresh output folder):
model loading, decoding, encoding, answering, scoring. Batch sizes alternate run by run (1, 8, 1,
8, ...); the ratio is of medians.

    python benchmarks/eval_batching.py --rounds 3     # writes benchmarks/results/eval_batching_<device>.json

Target (issue 26): batch size 8 >= 2x the questions/s of batch size 1, with identical scores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from crosslmm import build_tiny, save_checkpoint  # noqa: E402
from crosslmm_cli.app import quiet_libraries  # noqa: E402
from crosslmm_cli.evaluation.runner import EvalSettings, evaluate  # noqa: E402
from crosslmm_cli.synthetic_video import index_frames, write_video  # noqa: E402
from tests.helpers import open_gates  # noqa: E402


def make_benchmark(root: Path, videos: int, per_video: int) -> Path:
    data = root / "questions"
    (data / "clips").mkdir(parents=True)
    rows = []
    for video in range(videos):
        write_video(data / "clips" / f"v{video}.mp4", index_frames(24 + video, 64, 64), (64, 64), 8, "libx264", 4)
        rows += [{"video": f"clips/v{video}.mp4", "question": f"Question {q} about clip {video}: which colour?",
                  "options": ["red", "green"], "answer": "green"} for q in range(per_video)]
    (data / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--per-video", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    output = args.output or HERE / "results" / f"eval_batching_{args.device.split(':')[0]}.json"
    quiet_libraries()
    seconds: dict[int, list[float]] = {size: [] for size in sizes}
    results: dict[int, list] = {size: [] for size in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, processor = build_tiny(seed=0)
        open_gates(model, 0.7)  # the video changes every answer
        save_checkpoint(model, processor, root / "tiny")
        data = make_benchmark(root, args.videos, args.per_video)
        questions = args.videos * args.per_video
        for round_number in range(args.rounds):
            for size in sizes:  # alternated: 1, 8, 1, 8, ...
                settings = EvalSettings(task="jsonl", data_dir=data, output=root / f"run{round_number}_{size}",
                                        model=str(root / "tiny"), frames=args.frames, device=args.device,
                                        batch_size=size)
                began = time.perf_counter()
                report = evaluate(settings)
                seconds[size].append(time.perf_counter() - began)
                samples = (settings.output / "samples_jsonl.jsonl").read_text()
                results[size].append((report["results"], samples))
                print(f"round {round_number} batch size {size}: {questions / seconds[size][-1]:.2f} questions/s",
                      flush=True)
    rates = {size: statistics.median(questions / s for s in seconds[size]) for size in sizes}
    first = results[sizes[0]][0]
    report = {
        "command": " ".join(["python", "benchmarks/eval_batching.py", *sys.argv[1:]]),
        "machine": {"cpu_count": len(os.sched_getaffinity(0)), "platform": platform.platform(), "device": args.device},
        "questions": questions, "videos": args.videos, "frames": args.frames, "max_new_tokens": 64,
        "questions_per_s_median": rates,
        "speedup_over_batch_size_1": {size: rates[size] / rates[sizes[0]] for size in sizes},
        "seconds_per_run": seconds,
        "identical_scores_and_samples": all(run == first for size in sizes for run in results[size]),
        "accuracy": first[0]["jsonl"]["accuracy,none"],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("questions_per_s_median", "speedup_over_batch_size_1",
                                             "identical_scores_and_samples")}, indent=1))


if __name__ == "__main__":
    main()
