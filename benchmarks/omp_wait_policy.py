"""Training speed of the tiny model under torch's default OpenMP waiting (ACTIVE: threads spin) and
under OMP_WAIT_POLICY=PASSIVE, which crosslmm sets unless the user's environment says otherwise.

Each run is its own process (the policy is read when torch loads), the two policies alternated
(ACTIVE, PASSIVE, ACTIVE, ...); a run is `crosslmm finetune` of 12 steps on a generated folder.
`--load` keeps one core busy meanwhile, as other work does on a shared machine.

    python benchmarks/omp_wait_policy.py --repeats 3 [--load]   # writes benchmarks/results/omp_wait_policy[_loaded].json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from crosslmm_cli.synthetic_video import index_frames, write_video  # noqa: E402

STEPS = 12


def make_folder(root: Path) -> Path:
    folder = root / "train"
    folder.mkdir()
    rows = []
    for i in range(4):
        write_video(folder / f"c{i}.mp4", index_frames(12, 64, 64), (64, 64), 10, "libx264", 4)
        rows.append(json.dumps({"video": f"c{i}.mp4", "question": "What is it?", "answer": f"Clip {i}."}))
    (folder / "annotations.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def samples_per_second(folder: Path, model: Path, output: Path, policy: str) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    subprocess.run([sys.executable, "-m", "crosslmm_cli.app", "finetune", str(folder), "--model", str(model), "--output",
                    str(output), "--frames", "2", "--full", "--max-steps", str(STEPS), "--save-every", str(10 * STEPS)],
                   check=True, capture_output=True, env=env, cwd=HERE.parent)
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(row["samples_per_s"] for row in rows[2:])  # the first steps warm up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", action="store_true", help="keep one core busy with another process meanwhile")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    output = args.output or HERE / "results" / f"omp_wait_policy{'_loaded' if args.load else ''}.json"
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.load else None
    try:
        runs = measure(args.repeats)
    finally:
        if busy is not None:
            busy.kill()
    medians = {policy: statistics.median(rates) for policy, rates in runs.items()}
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "command": "python " + " ".join(sys.argv),
        "what": f"crosslmm finetune, tiny preset, {STEPS} steps, median samples/s of steps 3-{STEPS}",
        "other_load": "one core busy with another process" if args.load else "none",
        "samples_per_s": runs,
        "median_samples_per_s": medians,
        "passive_over_active": round(medians["PASSIVE"] / medians["ACTIVE"], 2),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["median_samples_per_s"]), "PASSIVE/ACTIVE", result["passive_over_active"])


def measure(repeats: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        folder = make_folder(root)
        subprocess.run([sys.executable, "-m", "crosslmm_cli.app", "init", "tiny", str(root / "tiny")], check=True,
                       capture_output=True, cwd=HERE.parent)
        runs: dict[str, list[float]] = {"ACTIVE": [], "PASSIVE": []}
        for repeat in range(repeats):
            for policy in runs:
                rate = samples_per_second(folder, root / "tiny", root / f"out-{policy}-{repeat}", policy)
                runs[policy].append(round(rate, 2))
                print(f"{policy:<8} run {repeat + 1}: {rate:.2f} samples/s", flush=True)
    return runs


if __name__ == "__main__":
    main()
