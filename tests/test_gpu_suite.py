"""benchmarks/gpu_suite.py, checked where CI runs: its --dry-run takes every step and writes every
file on the CPU, and it runs every test file that takes the `device` fixture."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_suite  # noqa: E402


def test_every_device_test_file_is_in_the_suite():
    using = {str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
             if re.search(r"def \w+\([^)]*\bdevice\b", path.read_text())}  # a test, or a fixture it takes
    assert using == set(gpu_suite.DEVICE_TEST_FILES)


def test_the_dry_run_takes_every_step(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--dry-run", "--output",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["step"], s["exit_code"]) for s in summary["steps"]] == [("tests", 0), ("bench", 0), ("ask", 0),
                                                                        ("serve", 0), ("distill", 0)]
    assert {"tests.xml", "bench_bf16.json", "bench_bf16.png", "bench_nf4.json", "ask_2_frames.json",
            "serve_concurrency.json", "serve_concurrency.png", "distill_metrics.jsonl"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "ask_2_frames.json").read_text())["quantize"] == "nf4"
