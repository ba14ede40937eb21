"""Peak resident memory of `crosslmm distill`'s two passes on CPU (issue 35): the teacher answering and
scoring one 32-frame video at its native 196 tokens per frame, and one student step at 9, with random
weights of `crosslmm-ov-0.5b`'s architecture (`crosslmm init --random --dtype bf16`, computed in fp32
on the CPU as the command does).

Each pass is its own process under GNU time: the teacher pass alone (the run is SIGKILLed by the tests'
helper as soon as its one shard is written), then the student's step alone (a `--resume` on a copy of
those targets: the teacher pass finds nothing to do and loads no teacher). Both peaks include the
model's weights, given beside them. The teacher never holds full-vocabulary logits over the prompt:
its head runs over the answer positions only (tests/cli/test_distill_teacher.py).

    python benchmarks/distill_memory.py

writes benchmarks/results/distill_memory_cpu.json.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "synthetic" / "work" / "distill_memory"
FRAMES = 32


def timed(command: list[str], env: dict) -> tuple[int, float, str]:
    """(exit code, peak resident MB, wall time) of ``command`` under GNU time."""
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env, cwd=ROOT)
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time .*: (.+)", done.stderr).group(1).strip()
    return done.returncode, round(peak_kb / 1024, 1), wall


def main() -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    checkpoint, data = WORK / "crosslmm-ov-0.5b-random", WORK / "data"
    if not (checkpoint / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "crosslmm_cli.app", "init", "crosslmm-ov-0.5b", str(checkpoint), "--random",
                        "--dtype", "bf16", "--force"], check=True, env=env)
    if not (data / "clip.mp4").is_file():
        data.mkdir(parents=True, exist_ok=True)
        from crosslmm_cli.synthetic_video import write_test_pattern

        write_test_pattern(str(data / "clip.mp4"), 16, (640, 360))
    teacher_out, student_out = WORK / "teacher-pass", WORK / "student-step"
    for folder in (teacher_out, student_out):
        shutil.rmtree(folder, ignore_errors=True)
    flags = ["--model", str(checkpoint), "--frames", str(FRAMES), "--teacher-max-new-tokens", "8", "--max-steps", "1",
             "--workers", "0", "--device", "cpu"]
    code, teacher_peak, teacher_wall = timed(
        [sys.executable, "-m", "tests.killed_at_step", "distill", str(data), "--output", str(teacher_out), *flags],
        {**env, "CROSSLMM_TEST_KILL_AT_SHARD": "0"})
    if not (teacher_out / "teacher" / "shard-00000.safetensors").is_file():
        sys.exit(f"the teacher pass wrote no targets (exit {code})")
    shutil.copytree(teacher_out / "teacher", student_out / "teacher")
    code, student_peak, student_wall = timed(
        [sys.executable, "-m", "crosslmm_cli.app", "distill", str(data), "--output", str(student_out), *flags, "--resume"],
        env)
    if code != 0:
        sys.exit(f"the student step failed (exit {code})")
    weights_mb = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors")) / 2**20 * 2  # bf16 on disk, fp32 loaded
    report = {
        "model": "crosslmm-ov-0.5b architecture, random weights (bf16 on disk, fp32 on the CPU)",
        "video": f"one 16-second 640x360 clip, {FRAMES} frames; one built-in prompt; 8 answer tokens",
        "teacher": {"tokens_per_frame": 196, "llm_positions": 196 * FRAMES, "peak_rss_mb": teacher_peak,
                    "wall": teacher_wall},
        "student_step": {"tokens_per_frame": 9, "llm_positions": 9 * FRAMES, "peak_rss_mb": student_peak,
                         "wall": student_wall},
        "weights_fp32_mb": round(weights_mb, 1),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), {os.cpu_count()} cores",
        "command": "python benchmarks/distill_memory.py",
    }
    output = HERE / "results" / "distill_memory_cpu.json"
    output.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
