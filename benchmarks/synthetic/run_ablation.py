"""A miniature of the paper's Table 2a: train a tiny CrossLMM at 1 token per frame with V2V and T2V
switched on and off, and score each on held-out questions that pooling makes unanswerable.

    python benchmarks/synthetic/run_ablation.py --steps 1500

Generates the data (make_data.py) unless it exists and a random tiny base model, then for each
(V2V, T2V) runs `crosslmm finetune` (stage 2, all weights) and `crosslmm eval jsonl`; writes
benchmarks/results/synthetic_ablation.json and prints a markdown table.

The base model's vision tower has its random position embeddings scaled up (`--position-scale`):
a random tiny tower barely tells its patches apart, which a pretrained one does (grid_probe.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIGS = {"off-off": (False, False), "on-off": (True, False), "off-on": (False, True), "on-on": (True, True)}


def crosslmm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "crosslmm_cli.app", *args], check=True, cwd=ROOT)


def make_base(path: Path, position_scale: float) -> None:
    sys.path.insert(0, str(ROOT))
    from models.builders import build_tiny
    from models.loading import save_checkpoint

    model, processor = build_tiny(tokens_per_frame=1)
    model.vision_tower.embeddings.position_embedding.weight.data *= position_scale
    save_checkpoint(model, processor, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="V2V-T2V settings")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--position-scale", type=float, default=5.0)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "synthetic_ablation.json")
    args = parser.parse_args()
    work = args.work
    if not (work / "heldout" / "questions.jsonl").exists():
        subprocess.run([sys.executable, str(HERE / "make_data.py"), str(work), "--train", str(args.train),
                        "--heldout", str(args.heldout)], check=True)
    base = work / f"tiny-1tok-pos{args.position_scale:g}"
    if not base.exists():
        make_base(base, args.position_scale)
    rows = []
    for name in args.configs:
        v2v, t2v = CONFIGS[name]
        began = time.perf_counter()
        crosslmm("finetune", str(work / "train"), "--output", str(work / name), "--model", str(base), "--full",
                 "--train-vision", "--vision-lr", str(args.lr), "--lr", str(args.lr), "--max-steps", str(args.steps),
                 "--batch-size", str(args.batch_size), "--frames", "2", "--no-gradient-checkpointing",
                 "--save-every", str(args.steps), "--gate-init", "1.0",  # from scratch: start with open gates
                 "--v2v" if v2v else "--no-v2v", "--t2v" if t2v else "--no-t2v")
        trained = time.perf_counter() - began
        crosslmm("eval", "jsonl", "--data-dir", str(work / "heldout"), "--model", str(work / name), "--frames", "2",
                 "--output", str(work / f"{name}_eval"), "--max-new-tokens", "8")
        results = json.loads((work / f"{name}_eval" / "results.json").read_text())["results"]["jsonl"]
        final_loss = json.loads((work / name / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
        rows.append({"v2v": v2v, "t2v": t2v, "heldout_accuracy": results["accuracy,none"], "chance": 25.0,
                     "train_seconds": round(trained, 1), "final_loss": round(final_loss, 4), "steps": args.steps})
        print(json.dumps(rows[-1]), flush=True)
    report = {"command": "python benchmarks/synthetic/run_ablation.py " + " ".join(sys.argv[1:]),
              "task": "colour of the cell named in the question, 4x4 grid, each of 4 colours in 4 cells",
              "model": f"tiny preset, 1 token per frame, trained from random weights (stage 2, all weights, vision "
                       f"tower too), position embeddings x{args.position_scale:g}",
              "train_videos": args.train, "heldout_questions": args.heldout, "results": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print("| V2V | T2V | held-out accuracy | training time |\n|---|---|---|---|")
    for row in rows:
        print(f"| {'on' if row['v2v'] else 'off'} | {'on' if row['t2v'] else 'off'} | {row['heldout_accuracy']:.1f} % "
              f"| {row['train_seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
