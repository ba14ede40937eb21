"""A miniature of the paper's Table 2a: train a tiny CrossLMM at 1 token per frame with V2V and T2V
switched on and off, and score each on held-out questions that pooling makes unanswerable.

    python benchmarks/synthetic/run_ablation.py

Generates the data (make_data.py) unless it exists and a random tiny base model, then for each
(V2V, T2V) runs `crosslmm finetune` (stage 2, all weights) and `crosslmm eval jsonl`; writes
benchmarks/results/synthetic_ablation.json and prints a markdown table.

Two stand-ins for the pretrained parts a real CrossLMM starts from (grid_probe.py shows why): the
random vision tower's position embeddings are scaled up (`--position-scale`), as a random tiny
tower barely tells its patches apart; and with the shapes task, one text-only warm-up
(`--warmup-steps`, shared by all settings) teaches the LLM to repeat the colour asked about, the
skill that carries the question to the positions that query the frame.
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


def make_base(path: Path, position_scale: float, cross_attn_every: int) -> None:
    sys.path.insert(0, str(ROOT))
    from crosslmm.builders import build_tiny
    from crosslmm.loading import save_checkpoint

    model, processor = build_tiny(tokens_per_frame=1, cross_attn_every=cross_attn_every)
    model.vision_tower.embeddings.position_embedding.weight.data *= position_scale
    save_checkpoint(model, processor, path)


def train(folder: Path, output: Path, base: Path, steps: int, batch_size: int, lr: float, v2v: bool, t2v: bool,
          *extra: str) -> None:
    """Stage 2, all weights, the vision tower too (at the same learning rate)."""
    crosslmm("finetune", str(folder), "--output", str(output), "--model", str(base), "--full", "--train-vision",
             "--vision-lr", str(lr), "--lr", str(lr), "--max-steps", str(steps), "--batch-size", str(batch_size),
             "--frames", "2", "--no-gradient-checkpointing", "--save-every", str(steps),
             "--v2v" if v2v else "--no-v2v", "--t2v" if t2v else "--no-t2v", *extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="V2V-T2V settings")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=50)
    parser.add_argument("--position-scale", type=float, default=5.0)
    parser.add_argument("--task", choices=["grid", "shapes"], default="shapes")
    parser.add_argument("--cross-attn-every", type=int, default=1)
    parser.add_argument("--warmup-videos", type=int, default=500)
    parser.add_argument("--warmup-steps", type=int, default=600,
                        help="shapes: first teach the LLM to repeat the asked colour (a text-only skill)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "synthetic_ablation.json")
    args = parser.parse_args()
    work = args.work
    if not (work / "heldout" / "questions.jsonl").exists():
        subprocess.run([sys.executable, str(HERE / "make_data.py"), str(work), "--train", str(args.train),
                        "--heldout", str(args.heldout), "--task", args.task,
                        "--warmup", str(args.warmup_videos if args.task == "shapes" else 0)], check=True)
    base = work / f"tiny-1tok-pos{args.position_scale:g}-every{args.cross_attn_every}"
    if not base.exists():
        make_base(base, args.position_scale, args.cross_attn_every)
    if args.task == "shapes" and args.warmup_steps:
        warmed = work / "warmed-up"
        if not (warmed / "config.json").exists():
            train(work / "warmup", warmed, base, args.warmup_steps, args.batch_size, args.lr, True, True,
                  "--gate-init", "1.0")
        base = warmed
    rows = []
    for name in args.configs:
        v2v, t2v = CONFIGS[name]
        began = time.perf_counter()
        # from scratch, start with open gates (a warmed-up base has them open already)
        gates = () if base.name == "warmed-up" else ("--gate-init", "1.0")
        train(work / "train", work / name, base, args.steps, args.batch_size, args.lr, v2v, t2v, *gates)
        trained = time.perf_counter() - began
        crosslmm("eval", "jsonl", "--data-dir", str(work / "heldout"), "--model", str(work / name), "--frames", "2",
                 "--output", str(work / f"{name}_eval"), "--max-new-tokens", "8")
        results = json.loads((work / f"{name}_eval" / "results.json").read_text())["results"]["jsonl"]
        final_loss = json.loads((work / name / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
        rows.append({"v2v": v2v, "t2v": t2v, "heldout_accuracy": results["accuracy,none"], "chance": 25.0,
                     "train_seconds": round(trained, 1), "final_loss": round(final_loss, 4), "steps": args.steps})
        print(json.dumps(rows[-1]), flush=True)
    tasks = {"grid": "colour of the cell named in the question, 4x4 grid, each of 4 colours in 4 cells",
             "shapes": "shape (square, ring, bar, pole) of the object of the colour named in the question, "
                       "8 objects of distinct colours in a 4x4 grid"}
    warmup = f", after a {args.warmup_steps}-step text-only warm-up" if args.task == "shapes" and args.warmup_steps else ""
    report = {"command": "python benchmarks/synthetic/run_ablation.py " + " ".join(sys.argv[1:]),
              "machine": "2-core CPU", "task": tasks[args.task],
              "model": f"tiny preset, 1 token per frame, DCAL every {args.cross_attn_every} layer(s), trained from random "
                       f"weights (stage 2, all weights, vision tower too), position embeddings x{args.position_scale:g}"
                       + warmup,
              "train_videos": args.train, "heldout_videos": args.heldout, "results": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print("| V2V | T2V | held-out accuracy | training time |\n|---|---|---|---|")
    for row in rows:
        print(f"| {'on' if row['v2v'] else 'off'} | {'on' if row['t2v'] else 'off'} | {row['heldout_accuracy']:.1f} % "
              f"| {row['train_seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
