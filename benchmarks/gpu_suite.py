"""Everything only a GPU can show, in one command that ends within 15 minutes on an H100/H200 (or in
two calls of at most 10: ``--steps tests,bench,ask``, then ``--steps serve,distill``).

    python benchmarks/gpu_suite.py               # on a CUDA machine
    python benchmarks/gpu_suite.py --dry-run     # any machine: tiny preset, 2 frames, CPU, every step and path

Steps (each a subprocess with its own time limit, its output kept in the results folder):
1. tests: the tests that take a device (model parity in bf16, cached generation equal to recompute,
   NF4 generation through bitsandbytes, `ask` end to end, `finetune` under bf16 autocast and QLoRA,
   a miniature eval), run on CUDA (`pytest -k on-cuda`); junit XML and log.
2. bench: CrossLMM-2B in bf16 at 32, 64, 128 and 256 frames against the full-token baseline, then
   at 256 frames with NF4 (JSON and the Figure-4 PNG).
3. ask: random weights of crosslmm-ov-0.5b's architecture (`crosslmm init --random`, no download),
   default NF4, on a generated 10-minute 720p video at 32 and 128 frames (`--json`: timings, peak memory).
4. serve: benchmarks/serve_concurrency.py with crosslmm-ov-0.5b's architecture (random weights):
   throughput and time to first token at 1 and 16 concurrent clients, continuous batching against
   one answer at a time (JSON and PNG).
5. distill: `crosslmm distill` on the ask step's model (the teacher at its native 196 tokens per
   frame, the student at 9) over a folder of 4 one-minute videos at 32 frames, 8 optimizer steps:
   the teacher pass and the student's steps timed (its metrics.jsonl kept: samples/s per step).

``--steps`` runs some of them (e.g. ``--steps serve`` in a second call when one call's time is short).

Results go to ``benchmarks/results/gpu_suite_<device>/`` (``--output`` elsewhere), with
``summary.json`` naming the device, the versions, each step's exit code and seconds. The GPU
machine has no network: benchmarks/gpu_wheels.sh fetches the wheels it lacks (README, "GPU suite").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the files holding tests that take the `device` fixture (tests/conftest.py); named, so that the GPU
# machine needs none of the other tests' extras (lmms-eval)
DEVICE_TEST_FILES = ["tests/models/test_parity.py", "tests/models/test_generation.py",
                     "tests/models/test_batched_generation.py", "tests/cli/test_ask.py", "tests/cli/test_finetune.py",
                     "tests/cli/test_eval.py"]


STEPS = ("tests", "bench", "ask", "serve", "distill")


def device_name(dry_run: bool) -> str:
    import torch

    if dry_run:
        return "cpu-dry-run"
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --dry-run to check the suite on this machine")
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def plan(dry_run: bool, out: Path, work: Path) -> list[tuple[str, list[list[str]], int]]:
    """(step, commands, seconds allowed) in order; the dry run keeps every step and path at toy size."""
    crosslmm = [sys.executable, "-m", "crosslmm_cli.app"]
    device = "cpu" if dry_run else "cuda"
    bench_preset, frames, nf4_frames = ("tiny", "1,2", "2") if dry_run else ("crosslmm-2b", "32,64,128,256", "256")
    ask_preset, ask_frames, video_seconds = ("tiny", (2,), 4) if dry_run else ("crosslmm-ov-0.5b", (32, 128), 600)
    serve = ["--preset", "tiny", "--levels", "1,2", "--requests", "4"] if dry_run else [
        "--preset", "crosslmm-ov-0.5b", "--levels", "1,16", "--requests", "32"]
    checkpoint, video = work / "ask-model", work / "video-10min.mp4"
    make_video = (f"from crosslmm_cli.synthetic_video import write_test_pattern; "
                  f"write_test_pattern({str(video)!r}, {video_seconds})")
    distill_data, distill_out = work / "distill-data", work / "distill-run"
    make_distill_data = (f"import shutil; from pathlib import Path; from crosslmm_cli.synthetic_video import "
                         f"write_test_pattern; shutil.rmtree({str(distill_out)!r}, ignore_errors=True); "
                         f"Path({str(distill_data)!r}).mkdir(exist_ok=True); "
                         f"[write_test_pattern(str(Path({str(distill_data)!r}) / f'v{{i}}.mp4'), "
                         f"{4 if dry_run else 60}) for i in range(4)]")
    distill = [*crosslmm, "distill", str(distill_data), "--model", str(checkpoint), "--output", str(distill_out),
               "--device", device, "--max-steps", "2" if dry_run else "8", "--save-every", "100",
               "--frames", "2" if dry_run else "32", "--teacher-max-new-tokens", "8" if dry_run else "64"]
    if dry_run:  # the tiny preset records no native count
        distill += ["--teacher-tokens-per-frame", "16", "--tokens-per-frame", "1"]
    return [
        # the dry run takes the step's path with one file: CI runs every device test on the CPU anyway
        ("tests", [[sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", f"on-{device}",
                    f"--junitxml={out / 'tests.xml'}", *(DEVICE_TEST_FILES[:1] if dry_run else DEVICE_TEST_FILES)]], 200),
        ("bench", [[*crosslmm, "bench", "--preset", bench_preset, "--frames", frames, "--device", device,
                    "--json", str(out / "bench_bf16.json"), "--plot", str(out / "bench_bf16.png"),
                    *(["--dtype", "fp32"] if dry_run else ["--dtype", "bf16"])],
                   [*crosslmm, "bench", "--preset", bench_preset, "--frames", nf4_frames, "--device", device,
                    "--quantize", "nf4", "--dtype", "bf16", "--json", str(out / "bench_nf4.json")]], 240),
        ("ask", [[*crosslmm, "init", ask_preset, str(checkpoint), "--random", "--force",
                  "--dtype", "fp32" if dry_run else "bf16"],
                 [sys.executable, "-c", make_video],
                 *[[*crosslmm, "ask", str(video), "What happens in this video?", "--model", str(checkpoint),
                    "--frames", str(n), "--device", device, "--max-new-tokens", "32", "--json",
                    *(["--quantize", "nf4"] if dry_run else [])] for n in ask_frames]], 150),
        ("serve", [[sys.executable, str(ROOT / "benchmarks" / "serve_concurrency.py"), *serve, "--device", device,
                    "--rounds", "1", "--output", str(out / "serve_concurrency.json")]], 120),
        ("distill", [[sys.executable, "-c", make_distill_data], distill,
                     [sys.executable, "-c", f"import shutil; shutil.copy({str(distill_out / 'metrics.jsonl')!r}, "
                                            f"{str(out / 'distill_metrics.jsonl')!r})"]], 150),
    ]


def run_step(name: str, commands: list[list[str]], seconds: int, out: Path, env: dict) -> dict:
    """Run a step's commands in turn within ``seconds``; ``ask`` JSON answers are kept as files."""
    began, log, code = time.perf_counter(), [], 0
    for command in commands:
        left = seconds - (time.perf_counter() - began)
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=max(1.0, left))
            code = done.returncode
            log.append(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n[exit {code}]\n")
            if name == "ask" and "ask" in command and code == 0:
                frames = command[command.index("--frames") + 1]
                (out / f"ask_{frames}_frames.json").write_text(done.stdout)
        except subprocess.TimeoutExpired as expired:
            code = 124
            log.append(f"$ {' '.join(command)}\n{expired.stdout or ''}{expired.stderr or ''}\n[timed out]\n")
        if code != 0:
            break
    (out / f"{name}.log").write_text("".join(log))
    return {"step": name, "exit_code": code, "seconds": round(time.perf_counter() - began, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny preset, 2 frames, on the CPU")
    parser.add_argument("--output", type=Path, help="results folder (default benchmarks/results/gpu_suite_<device>)")
    parser.add_argument("--steps", default=",".join(STEPS), help="the steps to run, comma-separated (distill needs ask's "
                                                              "model)")
    args = parser.parse_args()
    device = device_name(args.dry_run)
    out = args.output or ROOT / "benchmarks" / "results" / f"gpu_suite_{device}"
    out.mkdir(parents=True, exist_ok=True)
    work = ROOT / "benchmarks" / "data" / "gpu_suite"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "HF_HUB_OFFLINE": "1"}
    chosen = args.steps.split(",")
    unknown = set(chosen) - {name for name, _, _ in plan(args.dry_run, out, work)}
    if unknown:
        sys.exit(f"--steps: no step named {', '.join(sorted(unknown))}; the steps are {', '.join(STEPS)}")
    steps = []
    for name, commands, seconds in plan(args.dry_run, out, work):
        if name not in chosen:
            continue
        print(f"{name} ...", flush=True)
        steps.append(run_step(name, commands, seconds, out, env))
        print(f"  exit {steps[-1]['exit_code']} in {steps[-1]['seconds']} s", flush=True)
    import torch

    summary = {
        "device": device, "dry_run": args.dry_run, "command": "python " + " ".join(sys.argv),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda if torch.cuda.is_available() else None},
        "steps": steps,
    }
    name = "summary.json" if chosen == list(STEPS) else f"summary_{'_'.join(chosen)}.json"
    (out / name).write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    sys.exit(max(step["exit_code"] for step in steps))


if __name__ == "__main__":
    main()
