"""A training folder: videos anywhere under it and ``annotations.jsonl`` (or ``.json``) in one of
three row formats (see crosslmm_cli.training_data.records), turned into token ids with loss on the
answer tokens only.

- LLaVA conversations: {"video": "rel/path.mp4", "conversations": [{"from": "human", "value":
  "<video>\\n..."}, {"from": "gpt", "value": "..."}, ...]} (multi-turn allowed);
- flat question answering: {"video", "question", "answer"};
- captions (Stage I): {"video", "caption"}.

A conversation or question/answer row without "video" is a text-only row (LLaVA mixtures keep the
LLM's language skills with them): it trains with no frames and no video placeholder.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import torch
from torch.utils.data import Dataset

from crosslmm.video_processing import pad_videos

from ..errors import UserError
from ..training_data.records import conversation
from ..video import SamplingRequest, read_frames

IGNORE_INDEX = -100


@dataclass
class Row:
    line: int  # 1-based line (or item) number in the annotation file
    video: Path | None  # None: a text-only row
    messages: list[dict]  # {"role": "user" | "assistant", "content": str}; the first user turn carries the video


@dataclass
class FolderReport:
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "line N: what is wrong"


def annotation_file(folder: Path) -> Path:
    for name in ("annotations.jsonl", "annotations.json"):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{folder} has no annotations.jsonl or annotations.json; add one next to the videos")


# An annotation row is a few kilobytes; a longer one is a mistake (or an attack) and is skipped unread.
MAX_ROW_BYTES = 1 << 20


def json_lines(path: Path, max_bytes: int = MAX_ROW_BYTES):
    """(line number, text, None) for each non-blank line of a JSON-lines file, (line number, None,
    what is wrong) for a line too long or not UTF-8; a UTF-8 byte-order mark is not part of the
    first row."""
    with open(path, "rb") as f:
        number = 0
        while raw := f.readline(max_bytes + 1):
            number += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                while (rest := f.readline(max_bytes)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of the line without holding it
                yield number, None, f"longer than {max_bytes >> 20} MB; split it into rows"
                continue
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield number, None, f"not UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1}); save the file as UTF-8"
                continue
            if text.strip():
                yield number, text, None


def read_folder(folder: Path, check_videos: Callable | None = None) -> FolderReport:
    """Parse the annotations; every bad row (malformed JSON, unknown format, a path escaping the
    folder, a missing or unreadable video) becomes a problem naming its line."""
    folder = folder.resolve()
    path = annotation_file(folder)
    report = FolderReport()
    if path.suffix == ".json":
        try:
            items = list(enumerate(json.loads(path.read_text(encoding="utf-8-sig")), 1))
        except UnicodeDecodeError as error:
            raise UserError(f"{path.name} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                            f"{error.start}); save it as UTF-8") from None
        except json.JSONDecodeError as error:
            raise UserError(f"{path.name} is not valid JSON (line {error.lineno}): {error.msg}") from None
        except TypeError:
            raise UserError(f"{path.name} must hold a JSON list of rows") from None
    else:
        items = []
        for number, line, problem in json_lines(path):
            if problem is not None:
                report.problems.append(f"line {number}: {problem}")
                continue
            try:
                items.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                report.problems.append(f"line {number}: malformed JSON ({error.msg})")
    checked: dict[Path, str | None] = {}
    for number, item in items:
        if not isinstance(item, dict) or not isinstance(item.get("video", ""), str):
            report.problems.append(f"line {number}: a row's \"video\" is a path string relative to the folder")
            continue
        try:
            messages = conversation(item, "video" if "video" in item else None)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            report.problems.append(f"line {number}: not a conversation, question/answer or caption row ({error})")
            continue
        if "video" not in item:
            report.rows.append(Row(number, None, messages))
            continue
        video = (folder / item["video"]).resolve()
        if not video.is_relative_to(folder):
            report.problems.append(f"line {number}: video path {item['video']!r} leaves the folder; it is refused")
            continue
        if video not in checked:
            checked[video] = check_videos(video) if check_videos else None
        if checked[video] is not None:
            report.problems.append(f"line {number}: {checked[video]}")
            continue
        report.rows.append(Row(number, video, messages))
    report.problems.sort(key=lambda problem: int(problem.split(":")[0].removeprefix("line ")))  # in file order
    return report


def video_missing(video: Path) -> str | None:
    """The up-front check: a stat per video, so a mistyped path is named before the model loads.
    Whether the file decodes is found out by the loader's workers, when the video is first read."""
    return None if video.is_file() else f"video {video.name} is missing"


def tokenize_conversation(processor, messages: list[dict], num_frames: int) -> tuple[list[int], list[int]]:
    """Token ids of the chat-templated conversation and labels that keep only the assistant answers
    (each answer's tokens and its end-of-turn token); the video placeholder goes in the first user
    turn. Each template segment is tokenised on its own, so the answer spans are exact."""
    conversation = [dict(m) for m in messages]
    if num_frames:  # a text-only row has no video part
        conversation[0] = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": conversation[0]["content"]}]}
    tokenizer = processor.tokenizer
    ids, labels, rendered = [], [], ""
    for index, message in enumerate(conversation):
        text = processor.render_messages(conversation[: index + 1], add_generation_prompt=False)
        segment, rendered = text[len(rendered):], text
        if index == 0 and num_frames:
            segment = processor.expand_video_placeholder(segment, num_frames)
        if message["role"] != "assistant":
            pieces = [(segment, False)]
        else:
            # "<|im_start|>assistant\n" + answer + "<|im_end|>" + "\n": learn the answer and its end
            header_end = segment.index("\n") + 1
            body_end = segment.rindex(message["content"]) + len(message["content"])
            end_token = segment[body_end:].rstrip("\n")
            pieces = [(segment[:header_end], False), (segment[header_end:body_end] + end_token, True),
                      (segment[body_end + len(end_token):], False)]
        for piece, learn in pieces:
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                labels += piece_ids if learn else [IGNORE_INDEX] * len(piece_ids)
    return ids, labels


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


# After this many different videos in a row that do not decode, the folder is wrong, not one file.
GIVE_UP_AFTER = 64


class VideoQADataset(Dataset):
    """Rows -> {input_ids, labels, pixels (T, 3, S, S), problems}. Runs in each DataLoader worker
    (a copy per worker): decoded clips are kept, least recently used first out, up to ``cache_bytes``
    per copy, since decoding, not the model, is what a small model waits on.

    A row whose video does not decode is skipped: the next row (in annotation order) stands in for
    it, so a batch stays full and every process of a distributed run gets as many batches; the
    skipped row comes back as (line, what is wrong) in ``problems`` for the training process to
    report. A video found bad is not decoded again by that copy; after GIVE_UP_AFTER different bad
    videos in a row the sample comes back without pixels and the run stops."""

    def __init__(self, rows: list[Row], processor, frames: int, cache_bytes: int = 2 << 30):
        self.rows, self.processor, self.frames = rows, processor, frames
        self.cache: OrderedDict[Path, torch.Tensor] = OrderedDict()
        self.cache_bytes, self.cached_bytes = cache_bytes, 0
        self.bad: dict[Path, str] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def pixels(self, video: Path) -> torch.Tensor:
        if video in self.cache:
            self.cache.move_to_end(video)
            return self.cache[video]
        _, sampled = read_frames(video, SamplingRequest(self.frames, max_side=2 * self.processor.image_size))
        pixels = self.processor.preprocess_frames(sampled.pixels)
        self.cache[video] = pixels
        self.cached_bytes += pixels.nbytes
        while self.cached_bytes > self.cache_bytes and len(self.cache) > 1:
            self.cached_bytes -= self.cache.popitem(last=False)[1].nbytes
        return pixels

    def readable_pixels(self, video: Path) -> torch.Tensor | None:
        if video not in self.bad:
            try:
                return self.pixels(video)
            except (UserError, OSError, av.FFmpegError) as error:
                self.bad[video] = str(error)
        return None

    def __getitem__(self, index: int) -> dict:
        problems, failed = [], set()
        for offset in range(len(self.rows)):
            row = self.rows[(index + offset) % len(self.rows)]
            pixels = no_frames(self.processor) if row.video is None else self.readable_pixels(row.video)
            if pixels is not None:
                ids, labels = tokenize_conversation(self.processor, row.messages, len(pixels))
                return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixels": pixels,
                        "problems": problems}
            problems.append((row.line, self.bad[row.video]))
            failed.add(row.video)
            if len(failed) == GIVE_UP_AFTER:
                break
        return {"pixels": None, "problems": problems}  # collate marks the batch unreadable


def collate(batch: list[dict], pad_token_id: int, stand_in: dict | None = None) -> dict[str, torch.Tensor]:
    """Right-pad ids (labels with IGNORE_INDEX) and videos (zero frames, counted in num_frames);
    ``problems`` lists the rows skipped for this batch (the training loop takes it out). A batch
    for which no readable video was found is only {"problems", "unreadable": True}. A batch of
    text-only rows gets ``stand_in`` (see :func:`visual_stand_in`) as one more row, counted in
    ``stand_in``; ``text_only_samples`` names the text-only rows of a recipe run."""
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
    if "sample" in rows[0]:  # a recipe run's (sample number, name), for samples.jsonl
        collated["samples"] = [item["sample"] for item in rows]
        collated["text_only_samples"] = [item["sample"][1] for item in text_only]
    return collated
