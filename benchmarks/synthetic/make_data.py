"""Short videos whose question needs a detail that pooling a frame to one token destroys.

Each frame is a 4x4 grid of 8x8 cells (one patch of the tiny vision tower each), coloured red,
green, blue and yellow four times each in random places; the question names one cell by a letter
("Colour of cell k?", cells a-p in reading order) and the answer is its colour. Every colour covers
a quarter of every frame, so an answer that ignores the question is right 25 % of the time, and
16 cells x 2 bits is more than one pooled token is trained to carry.

(A first version asked about one fixed corner: a trained per-patch projector keeps that patch in the
pooled token, and V2V/T2V off reached 100 % held-out; see synthetic_ablation_attempt.json.)

    python benchmarks/synthetic/make_data.py OUT --train 2000 --heldout 200

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


def question(cell: int) -> str:
    return f"Colour of cell {CELLS[cell]}?"


def make_split(folder: Path, count: int, rng: random.Random, frames: int) -> list[dict]:
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        image, names = grid(rng)
        name = f"videos/{index:05d}.mp4"
        write_video(folder / name, [image] * frames, (SIZE, SIZE), 4, "libx264", extra_output_args=["-qp", "0"])
        cell = rng.randrange(len(CELLS))
        rows.append({"video": name, "question": question(cell), "answer": names[cell]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for split, count, table in (("train", args.train, "annotations.jsonl"), ("heldout", args.heldout, "questions.jsonl")):
        rows = make_split(args.out / split, count, rng, args.frames)
        (args.out / split / table).write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
