"""`crosslmm distill` in miniature, on CPU, through the commands a user runs (issue 35).

The task is make_data.py's shapes task as images: 8 objects of distinct colours, each a square, ring,
bar or pole in one 8x8 cell of a 4x4 grid; "What shape is the red one?"; chance 25 %. Pooled to one
token per frame, the 8 objects are one average: the answer needs the cross-attention.

1. **The teacher**: the tiny preset trained with labels at 16 tokens per frame (every patch in the
   LLM, cross-attention off), in memory as benchmarks/synthetic/spatial_student.py trains it; saved as
   a checkpoint at 1 token per frame whose config says it was trained at 16: the base of every run.
2. **Distillation data**: a folder of PNGs and a prompts.jsonl of their questions (8 per image), and
   an annotations.jsonl of the answers, which only the labelled reference reads.
3. Runs, each a `crosslmm` command in its own process, scored with `crosslmm eval jsonl` on held-out
   images (exact match of the generated answer):
   - the base at 16 tokens per frame (the teacher) and at 1 (the floor, gates closed);
   - `crosslmm distill` with cross-entropy on the teacher's answers only (α = 0), and with KL + CE
     (α = 0.5, τ = 2), the second reusing the first's cached targets;
   - `crosslmm finetune --no-lora` on the labels with the same student settings (the reference).

    python benchmarks/distill_miniature.py

writes benchmarks/results/distill_miniature.json and .png; the work (data, base, runs) stays in
benchmarks/synthetic/work/distill_miniature and is reused by a rerun (delete it to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "synthetic"))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from make_data import objects  # noqa: E402

CROSSLMM = [sys.executable, "-m", "crosslmm_cli.app"]


def write_images(folder: Path, count: int, rng: random.Random, questions_per_image: int) -> list[dict]:
    """``count`` PNGs under folder/images and their rows {"image", "question", "answer"}: every object
    asked about, or one drawn at random."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        name = f"images/{index:05d}.png"
        image, found = objects(rng)
        Image.fromarray(image).save(folder / name)
        asked = found if questions_per_image == len(found) else rng.sample(found, questions_per_image)
        rows += [{"image": name, "question": f"What shape is the {colour} one?", "answer": shape} for colour, shape in asked]
    return rows


def make_data(work: Path, images: int, heldout: int, seed: int) -> tuple[Path, Path]:
    train, test = work / "train", work / "heldout"
    if (test / "questions.jsonl").is_file():
        return train, test
    rng = random.Random(seed)
    rows = write_images(train, images, rng, 8)
    (train / "prompts.jsonl").write_text("".join(json.dumps({"image": r["image"], "prompt": r["question"]}) + "\n"
                                                 for r in rows))
    (train / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = write_images(test, heldout, rng, 1)
    # eval jsonl names the visual input "video"; an image is a one-frame video
    (test / "questions.jsonl").write_text("".join(json.dumps({"video": r["image"], "question": r["question"],
                                                              "answer": r["answer"]}) + "\n" for r in held))
    return train, test


def make_base(work: Path, steps: int, seed: int, log) -> tuple[Path, dict]:
    """The teacher trained with labels at 16 tokens per frame, saved at 1 token per frame with its
    native count recorded: teacher and student in one checkpoint, as a crosslmm-ov preset is."""
    from spatial_student import encode_shapes, train

    from crosslmm import save_checkpoint
    from crosslmm.builders import build_tiny

    base = work / "base"
    about = work / "teacher.json"
    if (base / "config.json").is_file():
        return base, json.loads(about.read_text())
    torch.manual_seed(seed)
    teacher, processor = build_tiny(tokens_per_frame=16, v2v=False, t2v=False)
    teacher.vision_tower.embeddings.position_embedding.weight.data *= 5.0  # a pretrained encoder's position stand-in
    items = encode_shapes(processor, random.Random(seed + 1), 20000)
    heldout = encode_shapes(processor, random.Random(seed + 2), 300)
    began = time.perf_counter()
    curve = train(teacher, items, list(teacher.parameters()), steps, 16, 1e-3, seed, log, heldout)
    student, processor = build_tiny(tokens_per_frame=1)
    student.load_state_dict(teacher.state_dict())
    student.config.native_tokens_per_frame = 16
    student.config.native_pool_mode = student.config.pool_mode
    save_checkpoint(student, processor, base)
    info = {"steps": steps, "lr": 1e-3, "batch_size": 16, "seconds": round(time.perf_counter() - began, 1),
            "teacher_forced_heldout": curve[-1]["heldout"]}
    about.write_text(json.dumps(info))
    return base, info


def crosslmm(*arguments: str, log) -> float:
    """Run one crosslmm command (one thread, as every run here); its seconds."""
    began = time.perf_counter()
    log("$ crosslmm " + " ".join(arguments))
    done = subprocess.run([*CROSSLMM, *arguments], capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    if done.returncode != 0:
        sys.exit(f"crosslmm {arguments[0]} failed:\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - began, 1)


def accuracy(runs: Path, name: str, heldout: Path, model: Path, log, *flags: str) -> float:
    """``model``'s held-out accuracy (%) as ``crosslmm eval jsonl`` scores it."""
    output = runs / f"eval-{name}"
    if not (output / "results.json").is_file():
        crosslmm("eval", "jsonl", "--data-dir", str(heldout / "questions.jsonl"), "--model", str(model), "--frames", "1",
                 "--device", "cpu", "--output", str(output), *flags, log=log)
    return json.loads((output / "results.json").read_text())["results"]["jsonl"]["accuracy,none"]


def distill_runs(train: Path, base: Path, ce: Path, kl: Path, student: list[str], log) -> dict:
    """The two distilled students, the second on the first's cached targets; their seconds."""
    seconds = {}
    if not (ce / "config.json").is_file():
        seconds["distill, CE on the teacher's answers"] = crosslmm(
            "distill", str(train), "--model", str(base), "--output", str(ce), "--alpha", "0", "--teacher-max-new-tokens",
            "8", *student, *(["--resume"] if ce.exists() else []), log=log)
    if not (kl / "config.json").is_file():
        if not kl.exists():
            shutil.copytree(ce / "teacher", kl / "teacher")  # the same cached targets
        seconds["distill, KL + CE (teacher pass reused)"] = crosslmm(
            "distill", str(train), "--model", str(base), "--output", str(kl), "--alpha", "0.5", "--temperature", "2",
            "--teacher-max-new-tokens", "8", *student, "--resume", log=log)
    return seconds


def labelled_run(train: Path, base: Path, labels: Path, student: list[str], log) -> dict:
    if (labels / "config.json").is_file():
        return {}
    return {"finetune on the labels": crosslmm(
        "finetune", str(train), "--model", str(base), "--output", str(labels), "--no-lora", "--gate-init", "0.5",
        "--memory-position", "--lr", "1e-3", *student, *(["--resume"] if labels.exists() else []), log=log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=750, help="distillation images (8 prompts each)")
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--teacher-steps", type=int, default=8000)
    parser.add_argument("--student-steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=HERE / "synthetic" / "work" / "distill_miniature")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "distill_miniature.json")
    args = parser.parse_args()
    log = lambda line: print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)  # noqa: E731
    torch.set_num_threads(1)

    train, heldout = make_data(args.work, args.images, args.heldout, args.seed)
    base, teacher_training = make_base(args.work, args.teacher_steps, args.seed, log)
    runs = args.work / "runs"
    student = ["--tokens-per-frame", "1", "--frames", "1", "--batch-size", str(args.batch_size), "--max-steps",
               str(args.student_steps), "--seed", str(args.seed), "--save-every", "1000", "--device", "cpu"]
    ce, kl, labels = runs / "distill-ce", runs / "distill-kl", runs / "labels"
    with ThreadPoolExecutor(2) as pool:  # two runs side by side, one core each
        distilled = pool.submit(distill_runs, train, base, ce, kl, student, log)
        labelled = pool.submit(labelled_run, train, base, labels, student, log)
        seconds = {**distilled.result(), **labelled.result()}
    scores = {
        "teacher (16 tokens per frame)": accuracy(runs, "teacher", heldout, base, log, "--tokens-per-frame", "16"),
        "floor (1 token per frame, gates closed)": accuracy(runs, "floor", heldout, base, log),
        "distilled: CE on the teacher's answers (alpha 0)": accuracy(runs, "distill-ce", heldout, ce, log),
        "distilled: KL + CE (alpha 0.5, tau 2)": accuracy(runs, "distill-kl", heldout, kl, log),
        "reference: finetune on the labels": accuracy(runs, "labels", heldout, labels, log),
    }
    teacher, floor = scores["teacher (16 tokens per frame)"], scores["floor (1 token per frame, gates closed)"]
    report = {
        "task": "shapes (images): 'What shape is the <colour> one?', 8 objects, chance 25 %",
        "scored_by": "crosslmm eval jsonl (exact match of the generated answer), held-out images",
        "heldout_questions": args.heldout, "distillation_prompts": 8 * args.images,
        "teacher_training": teacher_training,
        "student": "tiny preset at 1 token per frame: V2V, T2V, projector, separator and memory position train; "
                   f"gates opened to tanh(0.5); lr 1e-3, batch {args.batch_size}, {args.student_steps} steps",
        "accuracy_percent": scores,
        "share_of_teacher": {name: round(value / teacher, 3) for name, value in scores.items()},
        "points_above_floor": {name: round(value - floor, 1) for name, value in scores.items()},
        "seconds": {**json.loads(args.output.read_text()).get("seconds", {}), **seconds} if args.output.is_file() else seconds,
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), {os.cpu_count()} cores, one thread",
        "command": "python benchmarks/distill_miniature.py " + " ".join(sys.argv[1:]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    plot(scores, teacher, args.output.with_suffix(".png"))
    log(json.dumps(scores, indent=1))


def plot(scores: dict, teacher: float, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.8))
    names = list(scores)
    axis.barh(range(len(names)), [scores[n] for n in names], color=["black", "grey", "tab:green", "tab:olive", "tab:blue"])
    axis.set_yticks(range(len(names)), names, fontsize=8)
    axis.invert_yaxis()
    axis.axvline(0.9 * teacher, color="black", linestyle=":", label="90 % of the teacher")
    axis.axvline(25, color="grey", linestyle="-.", label="chance")
    axis.set_xlabel("held-out accuracy (%), crosslmm eval jsonl")
    axis.set_title("crosslmm distill in miniature: a 1-token student of its 16-token self", fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
