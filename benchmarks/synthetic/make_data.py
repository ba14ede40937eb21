"""Short videos whose question needs a detail that pooling a frame to one token destroys.

Each video shows four small squares, one per corner, in four different colours (a random
permutation of red, green, blue, yellow) on grey; the question asks the colour of the top-left one
(`--any-corner`: of a random corner). Every frame's mean *pixel* is the same for all videos.

Measured, and why this is not yet the ablation the issue asks for: pooling happens after the
projector, a per-patch MLP, so a trained projector can keep the top-left patch alone and the single
pooled token still answers (V2V and T2V off: 100 % held-out after 1,500 steps). A fair miniature
needs the question to pick among more details than one token can hold (many small objects, the
target named in the question); a tiny model trained from scratch did not learn to route "which
corner" from the question within a few hundred steps, even with the cross-attention on.

    python benchmarks/synthetic/make_data.py OUT --train 2000 --heldout 200

writes OUT/train (annotations.jsonl for `crosslmm finetune`) and OUT/heldout (questions.jsonl for
`crosslmm eval jsonl`), both multiple choice with the same prompt.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from crosslmm_cli.evaluation.tasks import Doc, jsonl_prompt  # noqa: E402
from crosslmm_cli.synthetic_video import write_video  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
CORNERS = ["top-left", "top-right", "bottom-left", "bottom-right"]
SIZE, SQUARE = 32, 8  # one square = one 8x8 patch of the tiny vision tower


def frame(colours: list[str]) -> np.ndarray:
    image = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
    for (row, column), colour in zip([(0, 0), (0, 1), (1, 0), (1, 1)], colours):
        top, left = row * (SIZE - SQUARE), column * (SIZE - SQUARE)
        image[top: top + SQUARE, left: left + SQUARE] = COLOURS[colour]
    return image


def make_split(folder: Path, count: int, rng: random.Random, frames: int, any_corner: bool) -> list[dict]:
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        colours = rng.sample(list(COLOURS), 4)
        name = f"videos/{index:05d}.mp4"
        write_video(folder / name, [frame(colours)] * frames, (SIZE, SIZE), 4, "libx264",
                    extra_output_args=["-qp", "0"])
        corner = rng.randrange(4) if any_corner else 0
        options = list(COLOURS)  # one fixed order: the letter names the colour
        rows.append({"video": name, "question": f"What colour is the small square in the {CORNERS[corner]} corner?",
                     "options": options, "answer": colours[corner]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--any-corner", action="store_true", help="ask about a random corner, not always the top-left")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    train = make_split(args.out / "train", args.train, rng, args.frames, args.any_corner)
    with open(args.out / "train" / "annotations.jsonl", "w") as f:
        for row in train:  # the eval prompt, answered with the option's letter
            doc = Doc(0, None, row, "jsonl")
            letter = "ABCD"[row["options"].index(row["answer"])]
            f.write(json.dumps({"video": row["video"], "question": jsonl_prompt(doc), "answer": letter}) + "\n")
    heldout = make_split(args.out / "heldout", args.heldout, rng, args.frames, args.any_corner)
    (args.out / "heldout" / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in heldout))


if __name__ == "__main__":
    main()
