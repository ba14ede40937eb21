"""A micro-batch from tokenised samples: right-padded ids and labels, zero-padded frames, and the
stand-in row a micro-batch of text-only samples trains with."""

from __future__ import annotations

import torch

from crosslmm.video_processing import pad_videos

from .tokens import IGNORE_INDEX, tokenize_conversation


def no_frames(processor) -> torch.Tensor:
    """The pixels of a text-only row: (0, 3, S, S)."""
    return torch.zeros(0, 3, processor.image_size, processor.image_size)


def visual_stand_in(processor) -> dict:
    """The row a micro-batch of text-only rows is collated with: one black frame in a chat that
    learns nothing (every label ignored). It runs the vision tower, projector, separator and both
    cross-attentions, so that every process's backward reaches the same parameters (DDP and FSDP
    require it), and it changes nothing: rows never attend to each other, and it adds no loss term.
    Trained parts get zero gradients from it, as DDP gives parameters one process did not use."""
    ids, _ = tokenize_conversation(processor, [{"role": "user", "content": "."}, {"role": "assistant", "content": "."}], 1)
    return {"input_ids": torch.tensor(ids), "labels": torch.full((len(ids),), IGNORE_INDEX), "problems": [],
            "pixels": torch.zeros(1, 3, processor.image_size, processor.image_size)}


def collate(batch: list[dict], pad_token_id: int, stand_in: dict | None = None) -> dict[str, torch.Tensor]:
    """Right-pad ids (labels with IGNORE_INDEX) and videos (zero frames, counted in num_frames);
    ``problems`` lists the rows skipped for this batch (the training loop takes it out). A batch
    for which no readable video was found is only {"problems", "unreadable": True}. A batch of
    text-only rows gets ``stand_in`` (see :func:`visual_stand_in`) as one more row, counted in
    ``stand_in``. Samples that carry their ``sample`` (number, name) keep them in ``samples``, and
    the names of the text-only ones in ``text_only_samples``."""
    problems = [problem for item in batch for problem in item["problems"]]
    if any(item["pixels"] is None for item in batch):
        return {"problems": problems, "unreadable": True}
    rows = batch
    text_only = [item for item in rows if len(item["pixels"]) == 0]
    if stand_in is not None and len(text_only) == len(rows):
        batch = [*rows, stand_in]
    longest = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, item in enumerate(batch):
        length = len(item["input_ids"])
        input_ids[row, :length], labels[row, :length], attention_mask[row, :length] = item["input_ids"], item["labels"], 1
    collated = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "problems": problems,
                "stand_in": len(batch) - len(rows)}
    if any(len(item["pixels"]) for item in batch):
        collated["pixel_values_videos"], collated["num_frames"] = pad_videos([item["pixels"] for item in batch])
    if "sample" in rows[0]:  # (sample number, name), for samples.jsonl
        collated["samples"] = [item["sample"] for item in rows]
        collated["text_only_samples"] = [item["sample"][1] for item in text_only]
    return collated
