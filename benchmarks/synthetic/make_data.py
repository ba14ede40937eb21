"""Short videos whose question needs a detail that pooling a frame to one token destroys.

``--task shapes`` (what run_ablation.py uses): 8 small objects of distinct colours (of 8), each a
square, ring, bar or pole inside one 8x8 cell of a 4x4 grid; one question per object ("What shape
is the red one?"); chance 25 %. ``--warmup N`` adds OUT/warmup: N more videos whose answers are the
colour asked about, a text-only skill that needs no look at the frame.

``--task grid``: a 4x4 grid of 8x8 cells, red, green, blue and yellow four cells each; "Colour of
cell k?" (cells a-p in reading order). Every colour covers a quarter of every frame, so an answer
that ignores the question is right 25 % of the time. (grid_probe.py uses it.)

(A first version asked about one fixed corner: a trained per-patch projector keeps that patch in the
pooled token, and V2V/T2V off reached 100 % held-out; see synthetic_ablation_attempt.json.)

    python benchmarks/synthetic/make_data.py OUT --task shapes --train 2000 --heldout 50 --warmup 500

writes OUT/train (annotations.jsonl for `crosslmm finetune`) and OUT/heldout (questions.jsonl for
`crosslmm eval jsonl`, open questions scored by exact match).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from crosslmm_cli.synthetic_video import write_video  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
CELLS = "abcdefghijklmnop"
SIZE, CELL = 32, 8


def grid(rng: random.Random) -> tuple[np.ndarray, list[str]]:
    """A (32, 32, 3) frame and the colour of each cell, every colour in four cells."""
    names = rng.sample([name for name in COLOURS for _ in range(len(CELLS) // len(COLOURS))], len(CELLS))
    image = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    for cell, name in enumerate(names):
        row, column = divmod(cell, SIZE // CELL)
        image[row * CELL: (row + 1) * CELL, column * CELL: (column + 1) * CELL] = COLOURS[name]
    return image, names


SHAPES = ("square", "ring", "bar", "pole")
OBJECT_COLOURS = {**COLOURS, "purple": (220, 30, 220), "cyan": (30, 220, 220), "white": (255, 255, 255),
                  "black": (0, 0, 0)}


def shape_mask(shape: str) -> np.ndarray:
    mask = np.zeros((CELL, CELL), dtype=bool)
    if shape in ("square", "ring"):
        mask[1:7, 1:7] = True
        if shape == "ring":
            mask[3:5, 3:5] = False
    elif shape == "bar":
        mask[3:5, :] = True
    else:  # pole
        mask[:, 3:5] = True
    return mask


def objects(rng: random.Random, count: int = 8) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """A frame with ``count`` small objects of distinct colours, each a random shape in a random
    cell, and their (colour, shape)."""
    cells = rng.sample(range(len(CELLS)), count)
    colours = rng.sample(list(OBJECT_COLOURS), count)
    shapes = [rng.choice(SHAPES) for _ in range(count)]
    image = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
    for cell, colour, shape in zip(cells, colours, shapes):
        row, column = divmod(cell, SIZE // CELL)
        image[row * CELL: (row + 1) * CELL, column * CELL: (column + 1) * CELL][shape_mask(shape)] = OBJECT_COLOURS[colour]
    return image, list(zip(colours, shapes))


def question(cell: int) -> str:
    return f"Colour of cell {CELLS[cell]}?"


def make_split(folder: Path, count: int, rng: random.Random, frames: int, task: str) -> list[dict]:
    """Write ``count`` videos; grid: one question each; shapes: one per object ("What shape is the
    red one?"), and with task "warmup" the answer is the colour asked about (a text-only skill)."""
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        name = f"videos/{index:05d}.mp4"
        if task == "grid":
            image, names = grid(rng)
            cell = rng.randrange(len(CELLS))
            rows.append({"video": name, "question": question(cell), "answer": names[cell]})
        else:
            image, found = objects(rng)
            rows += [{"video": name, "question": f"What shape is the {colour} one?",
                      "answer": colour if task == "warmup" else shape} for colour, shape in found]
        write_video(folder / name, [image] * frames, (SIZE, SIZE), 4, "libx264", extra_output_args=["-qp", "0"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=["grid", "shapes"], default="grid")
    parser.add_argument("--warmup", type=int, default=0, help="shapes: videos of a text-only warm-up set (OUT/warmup)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    splits = [("train", args.train, "annotations.jsonl", args.task), ("heldout", args.heldout, "questions.jsonl", args.task)]
    if args.warmup:
        splits.append(("warmup", args.warmup, "annotations.jsonl", "warmup"))
    for split, count, table, task in splits:
        rows = make_split(args.out / split, count, rng, args.frames, task)
        (args.out / split / table).write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
