"""Is a training folder read as fast through training_data (one source of the mixture) as through the
folder loader it replaced (issue 33)? `crosslmm finetune FOLDER` with today's code and with an earlier
commit's (a git worktree), alternated round by round in one driver (A, B, A, B, ...), each run in its
own process with the same environment.

Each run is `finetune()` itself (stage 2 LoRA, batch 1, 8 frames, default workers, two epochs over
a folder of 640x360 clips of 3 s, tiny model); its rates are the samples over the summed step times
of metrics.jsonl, for the first epoch (every clip decoded) and the second (clips from the workers'
caches where they kept them).

    python benchmarks/folder_path_speed.py --before f69cab1 --clips 50 --rounds 3

writes benchmarks/results/folder_path_speed_cpu.json. Target: today's rates at least the earlier ones.
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
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.data_loading import make_folder  # noqa: E402

RUN = """
import json, sys
from pathlib import Path
from crosslmm_cli.app import quiet_libraries
from crosslmm_cli.finetune.train import FinetuneSettings, finetune
quiet_libraries()
folder, model, output, clips = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
finetune(FinetuneSettings(folder=folder, output=output, model=model, frames=8, epochs=2, save_every=10 * clips,
                          device="cpu"))
rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
print(json.dumps([1 / row["samples_per_s"] for row in rows]))
"""


def epoch_rates(code: Path, folder: Path, model: Path, output: Path, clips: int) -> list[float]:
    """samples/s of each of the two epochs of one run of ``code``'s finetune."""
    done = subprocess.run([sys.executable, "-c", RUN, str(folder), str(model), str(output), str(clips)], cwd=code,
                          env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True, check=True)
    seconds = json.loads(done.stdout.strip().splitlines()[-1])
    return [clips / sum(seconds[:clips]), clips / sum(seconds[clips:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="f69cab1", help="the commit to compare with")
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "folder_path_speed_cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        before = root / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            folder = make_folder(root, args.clips)
            subprocess.run([sys.executable, "-m", "crosslmm_cli.app", "init", "tiny", str(root / "tiny")], cwd=ROOT,
                           check=True, capture_output=True)
            codes = {"before": before, "now": ROOT}
            runs: dict[str, list[list[float]]] = {name: [] for name in codes}
            for round_ in range(args.rounds):
                for name, code in codes.items():  # alternated: A, B, A, B, ...
                    rates = epoch_rates(code, folder, root / "tiny", root / f"{name}-{round_}", args.clips)
                    runs[name].append(rates)
                    print(f"round {round_ + 1}: {name:6s} epoch 1 {rates[0]:6.2f}, epoch 2 {rates[1]:6.2f} samples/s",
                          flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    medians = {name: [statistics.median(r[epoch] for r in rates) for epoch in (0, 1)] for name, rates in runs.items()}
    report = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})", "cores": os.cpu_count(),
        "before": args.before, "clips": args.clips,
        "command": " ".join(["python", "benchmarks/folder_path_speed.py", *sys.argv[1:]]),
        "samples_per_s": {name: {"epoch_1": [round(r[0], 3) for r in rates], "epoch_2": [round(r[1], 3) for r in rates]}
                          for name, rates in runs.items()},
        "median_samples_per_s": {name: {"epoch_1": round(m[0], 3), "epoch_2": round(m[1], 3)} for name, m in medians.items()},
        "now_over_before": {f"epoch_{e + 1}": round(medians["now"][e] / medians["before"][e], 3) for e in (0, 1)},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["now_over_before"]))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
