"""Where the synthetic ablation stalls: a grid task trained in memory, with and without handing the
question's cell to the T2V queries.

The task is make_data.py's (a 4x4 grid of coloured cells, "Colour of cell k?"). The model is the
tiny preset at 1 token per frame, trained from random weights on samples drawn in memory (no video
files: this isolates the model from decoding).

``--hint`` adds a learned embedding of the asked cell to the input of every T2V query. It is not part
of CrossLMM: it stands in for what a pretrained LLM brings (the question's content at the positions
that query the frame), to show whether the DCAL itself can learn the lookup.

    python benchmarks/synthetic/grid_probe.py --v2v --t2v --hint
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from crosslmm_cli.training_data.collate import collate  # noqa: E402
from crosslmm_cli.training_data.tokens import tokenize_conversation  # noqa: E402
from make_data import CELLS, grid, question  # noqa: E402
from crosslmm.builders import build_tiny  # noqa: E402


def sample(rng: random.Random) -> tuple[np.ndarray, int, str]:
    """One frame (1, 32, 32, 3), the asked cell and its colour."""
    image, names = grid(rng)
    cell = rng.randrange(len(CELLS))
    return image[None], cell, names[cell]


def encode(processor, rng: random.Random, count: int) -> list[dict]:
    items = []
    for _ in range(count):
        frames, cell, answer = sample(rng)
        messages = [{"role": "user", "content": question(cell)}, {"role": "assistant", "content": answer}]
        ids, labels = tokenize_conversation(processor, messages, len(frames))
        items.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                      "pixels": processor.preprocess_frames(frames), "cell": cell, "problems": []})
    return items


def batch_of(items: list[dict], hint: dict) -> dict:
    hint["cells"] = torch.tensor([item["cell"] for item in items])
    return {name: value for name, value in collate(items, pad_token_id=0).items() if isinstance(value, torch.Tensor)}


@torch.no_grad()
def accuracy(model, items: list[dict], hint: dict) -> float:
    """Share of answers whose every token is the argmax (teacher forced)."""
    model.eval()
    right = 0
    for start in range(0, len(items), 50):
        batch = batch_of(items[start: start + 50], hint)
        labels = batch.pop("labels")
        predicted = model(**batch).logits[:, :-1].argmax(-1)
        target, counted = labels[:, 1:], labels[:, 1:] != -100
        right += int(((predicted == target) | ~counted).all(dim=1).sum())
    model.train()
    return right / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--v2v", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--t2v", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--hint", action="store_true", help="add the asked cell's embedding to every T2V query input")
    parser.add_argument("--position-scale", type=float, default=5.0,
                        help="scale of the vision tower's random position embeddings (1: as initialised)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, processor = build_tiny(tokens_per_frame=1, v2v=args.v2v, t2v=args.t2v)
    model.vision_tower.embeddings.position_embedding.weight.data *= args.position_scale
    for layer in model.cross_attention_layers():  # trained from scratch: start with open gates
        for gate in [part.gate for part in (layer.cross_attn.v2v, layer.cross_attn.t2v) if part is not None]:
            gate.scale.data.fill_(1.0)
    hint: dict = {}
    if args.hint:
        model.hint = torch.nn.Embedding(16, model.config.text_config.hidden_size)
        for layer in model.cross_attention_layers():
            layer.cross_attn.t2v.register_forward_pre_hook(
                lambda module, inputs: (inputs[0] + model.hint(hint["cells"])[:, None], *inputs[1:]))
    model.train()
    train = encode(processor, random.Random(args.seed + 1), 20000)
    heldout = encode(processor, random.Random(args.seed + 2), 300)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 50
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
    rng = random.Random(args.seed)
    began = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = model(**batch_of(rng.sample(train, args.batch_size), hint)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 250 == 0:
            print(f"step {step}: loss {loss.item():.3f}, held-out {accuracy(model, heldout, hint):.1%}", flush=True)
    result = {"v2v": args.v2v, "t2v": args.t2v, "hint": args.hint, "position_scale": args.position_scale,
              "steps": args.steps, "heldout_accuracy": round(100 * accuracy(model, heldout, hint), 1), "chance": 25.0,
              "seconds": round(time.perf_counter() - began, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
