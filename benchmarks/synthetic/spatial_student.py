"""Can a 1-token-per-frame student learn, through its cross-attention, the spatial detail its full-token
teacher reads (issue 35's first question)? In memory, on one of make_data.py's tasks, with the tiny
preset: ``shapes`` ("What shape is the red one?": 8 objects of distinct colours, each a square, ring,
bar or pole in one 8x8 cell of a 4x4 grid, one patch each; the answer is found by content) or
``grid`` ("Colour of cell k?": found by position); chance 25 % in both:

1. the **teacher**: trained with labels at 16 tokens per frame (every patch in the LLM, the way
   LLaVA-OneVision sees a frame), cross-attention off and its gates closed; all weights train;
2. the **student**: the teacher's weights at 1 token per frame (the frame pooled to one token, the
   cross-attention's gates closed): the floor;
3. the student trained with the labels on its cross-attention alone (V2V and T2V; the LLM, the vision
   tower and the projector frozen, as the teacher inside a converted checkpoint stays), in variants:
   the memory without and with :class:`crosslmm.memory_position.MemoryPosition` (a zero-initialised
   patch and frame-index embedding), the gates closed or opened to tanh(0.5) first. The projector is
   frozen because a trained projector can pack the detail into the pooled token itself (8 objects, a
   64-wide token: the mean of one-hot codes keeps them all), which would hide whether the
   cross-attention learns (``--train-projector`` trains it too, as Stage I does).

Every variant starts from the same teacher and sees the same batches; the held-out accuracy is the
share of answers every token of which is the argmax (teacher forced).

    python benchmarks/synthetic/spatial_student.py --task shapes --variants plain position position-open plain-open

writes benchmarks/results/spatial_student_<task>.json and .png (runs started side by side may share
the file: each adds its variants under a lock).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from grid_probe import accuracy, batch_of, encode  # noqa: E402
from make_data import objects  # noqa: E402

from crosslmm.builders import build_tiny  # noqa: E402

VARIANTS = {  # name: (memory position, gate init)
    "plain": (False, None), "plain-open": (False, 0.5), "position": (True, None), "position-open": (True, 0.5),
}


def encode_shapes(processor, rng: random.Random, count: int) -> list[dict]:
    """As grid_probe.encode, for the shapes task: one question about one object of each frame."""
    from crosslmm_cli.training_data.tokens import tokenize_conversation

    items = []
    for _ in range(count):
        image, found = objects(rng)
        colour, shape = rng.choice(found)
        messages = [{"role": "user", "content": f"What shape is the {colour} one?"}, {"role": "assistant", "content": shape}]
        ids, labels = tokenize_conversation(processor, messages, 1)
        items.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                      "pixels": processor.preprocess_frames(image[None]), "cell": 0, "problems": [],
                      "question": messages[0]["content"], "image": image})
    return items


@torch.no_grad()
def teacher_targets(teacher, teacher_processor, student_processor, items: list[dict], top_k: int, temperature: float,
                    log) -> list[dict]:
    """Label-free training items: each question answered by the teacher (greedy, 16 tokens per frame),
    the student's item built on that answer, with the teacher's top-k log-probabilities at each of
    its answer tokens (its own answer, teacher forced). Only the question and the frame are read."""
    from crosslmm_cli.distill.loss import fold_top_k
    from crosslmm_cli.training_data.tokens import IGNORE_INDEX, tokenize_conversation

    teacher.eval()
    out = []
    for start in range(0, len(items), 64):
        chunk = items[start:start + 64]
        conversations = [[{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": item["question"]}]}]
                         for item in chunk]
        inputs = teacher_processor(conversations, videos=[item["image"][None] for item in chunk])
        # the answer ends at the chat's end-of-turn token (the tiny preset's generation config names none)
        generated = teacher.generate(**inputs, max_new_tokens=8, do_sample=False,
                                     eos_token_id=teacher_processor.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        answers = teacher_processor.tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:],
                                                           skip_special_tokens=True)
        for item, answer in zip(chunk, answers):
            messages = [{"role": "user", "content": item["question"]}, {"role": "assistant", "content": answer.strip()}]
            t_ids, t_labels = tokenize_conversation(teacher_processor, messages, 1)
            logits = teacher(input_ids=torch.tensor([t_ids]), pixel_values_videos=item["pixels"][None]).logits[0, :-1]
            answer_rows = torch.tensor(t_labels[1:]) != IGNORE_INDEX
            ids, log_probs = fold_top_k(logits[answer_rows], top_k, temperature)
            s_ids, s_labels = tokenize_conversation(student_processor, messages, 1)
            out.append({"input_ids": torch.tensor(s_ids), "labels": torch.tensor(s_labels), "pixels": item["pixels"],
                        "cell": 0, "problems": [], "teacher_ids": ids, "teacher_log_probs": log_probs})
        if start % 1280 == 0:
            log(f"teacher answered {start + len(chunk)} of {len(items)} questions")
    return out


def distilled_loss(model, items: list[dict], alpha: float, temperature: float) -> torch.Tensor:
    """The distillation loss of a batch of :func:`teacher_targets` items (answer positions aligned by
    the answer's tokens: the teacher's and the student's prompts differ in length)."""
    from crosslmm_cli.distill.loss import distillation_loss

    batch = batch_of(items, {})
    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1]
    rows = labels[:, 1:] != -100
    return distillation_loss(logits[rows], labels[:, 1:][rows], torch.cat([item["teacher_ids"] for item in items]),
                             torch.cat([item["teacher_log_probs"] for item in items]), alpha=alpha,
                             temperature=temperature)


def train(model, items, parameters, steps: int, batch_size: int, lr: float, seed: int, log, heldout,
          alpha: float | None = None, temperature: float = 2.0) -> list[dict]:
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    warmup = min(50, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    rng, curve = random.Random(seed), []
    model.train()
    for step in range(1, steps + 1):
        picked = rng.sample(items, batch_size)
        loss = model(**batch_of(picked, {})).loss if alpha is None else distilled_loss(model, picked, alpha, temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 250 == 0 or step == steps:
            curve.append({"step": step, "loss": round(loss.item(), 4), "heldout": round(100 * accuracy(model, heldout, {}), 1)})
            log(f"step {step}: loss {loss.item():.3f}, held-out {curve[-1]['heldout']:.1f} %")
    return curve


def gates(model) -> dict:
    values = [abs(part.gate.scale.item()) for layer in model.cross_attention_layers()
              for part in (layer.cross_attn.v2v, layer.cross_attn.t2v) if part is not None]
    return {"max_abs_gate_arg": round(max(values), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["shapes", "grid"], default="shapes")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument("--student-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--position-scale", type=float, default=5.0,
                        help="the random vision tower's position embeddings scaled (a pretrained encoder's stand-in)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument("--train-projector", action="store_true", help="the student trains its projector too")
    parser.add_argument("--targets", choices=["labels", "teacher"], default="labels",
                        help="labels: the answers in the data; teacher: no label read, the teacher's answers and "
                             "top-k log-probabilities (--alpha: the KL's weight, 0 = cross-entropy on its answers)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--distill-items", type=int, default=6000, help="questions the teacher answers")
    parser.add_argument("--teacher", type=Path, help="the teacher's weights: trained once, then reused "
                                                     "(default: work/spatial_teacher_<task>.pt)")
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/spatial_student_<task>.json")
    args = parser.parse_args()
    args.teacher = args.teacher or HERE / "work" / f"spatial_teacher_{args.task}.pt"
    args.output = args.output or HERE.parents[0] / "results" / f"spatial_student_{args.task}.json"
    encode_task = encode_shapes if args.task == "shapes" else encode
    log = lambda line: print(line, flush=True)  # noqa: E731

    torch.manual_seed(args.seed)
    teacher, teacher_processor = build_tiny(tokens_per_frame=16, v2v=False, t2v=False)
    teacher.vision_tower.embeddings.position_embedding.weight.data *= args.position_scale
    train_items = encode_task(teacher_processor, random.Random(args.seed + 1), 20000)
    heldout = encode_task(teacher_processor, random.Random(args.seed + 2), 300)
    report = json.loads(args.output.read_text()) if args.output.is_file() else {}
    if args.teacher.is_file():
        teacher.load_state_dict(torch.load(args.teacher, weights_only=True))
    else:
        began = time.perf_counter()
        log("teacher: 16 tokens per frame, every weight, no cross-attention")
        curve = train(teacher, train_items, [p for p in teacher.parameters()], args.teacher_steps, args.batch_size,
                      args.teacher_lr, args.seed, log, heldout)
        args.teacher.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), args.teacher)
        report["teacher"] = {"tokens_per_frame": 16, "steps": args.teacher_steps, "lr": args.teacher_lr, "curve": curve,
                             "seconds": round(time.perf_counter() - began, 1)}
    report.setdefault("teacher", {})["heldout_accuracy"] = round(100 * accuracy(teacher, heldout, {}), 1)
    log(f"teacher held-out {report['teacher']['heldout_accuracy']} %")

    for name in args.variants:
        position, gate_init = VARIANTS[name]
        student, processor = build_tiny(tokens_per_frame=1)
        student.load_state_dict(teacher.state_dict())
        if position:
            student.add_memory_position()
        student_train = encode_task(processor, random.Random(args.seed + 1), 20000)
        if args.targets == "teacher":
            if args.task != "shapes":
                sys.exit("--targets teacher: the shapes task only")
            student_train = teacher_targets(teacher, teacher_processor, processor, train_items[:args.distill_items],
                                            args.top_k, args.temperature, log)
        student_heldout = encode_task(processor, random.Random(args.seed + 2), 300)
        floor = round(100 * accuracy(student, student_heldout, {}), 1)
        student.requires_grad_(False)
        parts = [part for layer in student.cross_attention_layers() for part in (layer.cross_attn.v2v, layer.cross_attn.t2v)
                 if part] + ([student.multi_modal_projector] if args.train_projector else [])
        parts += [student.memory_position] if position else []
        for part in parts:
            part.requires_grad_(True)
        for layer in student.cross_attention_layers():
            for part in (layer.cross_attn.v2v, layer.cross_attn.t2v):
                if part is not None:
                    part.k_proj.bias.requires_grad_(False)  # cancelled by the softmax
                    if gate_init is not None:
                        part.gate.scale.data.fill_(gate_init)
        parameters = [p for p in student.parameters() if p.requires_grad]
        log(f"student {name}: floor {floor} %")
        began = time.perf_counter()
        alpha = args.alpha if args.targets == "teacher" else None
        curve = train(student, student_train, parameters, args.student_steps, args.batch_size, args.lr, args.seed, log,
                      student_heldout, alpha, args.temperature)
        result = {
            "memory_position": position, "gate_init": gate_init, "train_projector": args.train_projector,
            "targets": args.targets, **({"alpha": args.alpha, "temperature": args.temperature, "top_k": args.top_k,
                                         "distill_items": args.distill_items} if args.targets == "teacher" else {}),
            "floor": floor, "steps": args.student_steps,
            "heldout_accuracy": curve[-1]["heldout"], "curve": curve, **gates(student),
            "seconds": round(time.perf_counter() - began, 1)}
        log(json.dumps({name: result["heldout_accuracy"]}))
        distilled = f", distilled (alpha {args.alpha})" if args.targets == "teacher" else ""
        record(args.output, f"{name}, {args.student_steps} steps{distilled}", result, report["teacher"], {
            "command": " ".join(["python", "benchmarks/synthetic/spatial_student.py", *sys.argv[1:]]),
            "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), {os.cpu_count()} cores",
            "task": args.task,
            "student_trains": "V2V, T2V (+ the memory position, + the projector where train_projector); the rest "
                              f"frozen; lr {args.lr}, batch {args.batch_size}, cosine with warm-up"})


def record(output: Path, key: str, result: dict, teacher: dict, about: dict) -> None:
    """Add one student's result to ``output`` (under a lock: runs side by side share it) and redraw
    the plot beside it."""
    import fcntl
    import tempfile

    output.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / f"{output.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = json.loads(output.read_text()) if output.is_file() else {}
        report.update(about)
        report["teacher"] = {**teacher, **report.get("teacher", {})}  # the run that trained it wrote its curve
        report.setdefault("students", {})[key] = result
        commands = report.setdefault("commands", [])
        if about["command"] not in commands:
            commands.append(about["command"])
        report.pop("command", None)
        output.write_text(json.dumps(report, indent=1) + "\n")
        plot(report, output.with_suffix(".png"))


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for key, student in sorted(report["students"].items()):
        axis.plot([0] + [c["step"] for c in student["curve"]], [student["floor"]] + [c["heldout"] for c in student["curve"]],
                  label=key)
    axis.axhline(report["teacher"]["heldout_accuracy"], color="black", linestyle="--", label="teacher (16 tokens/frame)")
    axis.axhline(0.9 * report["teacher"]["heldout_accuracy"], color="grey", linestyle=":", label="90 % of the teacher")
    axis.axhline(25, color="grey", linestyle="-.", label="chance")
    axis.set_xlabel("student step")
    axis.set_ylabel("held-out accuracy (%)")
    axis.set_title(f"1-token student learning through its cross-attention ({report['task']})")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
