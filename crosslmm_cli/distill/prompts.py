"""What the teacher is asked: every image and video under the data folder, each with its prompts.

A ``prompts.jsonl`` beside the media gives a file its own prompts, one row each (several rows per file
allowed)::

    {"video": "cooking/0001.mp4", "prompt": "List the steps in order."}
    {"image": "street.jpg", "prompt": "How many cars are parked?"}

A file no row names is asked one instruction of the built-in set (or of ``--prompts FILE``, one
instruction per line), taken in turn over the files in name order, so the set is spread evenly over
the folder. Nothing else of the folder is read: an ``annotations.jsonl`` with answers stays closed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..training_data.records import media_kind

PROMPTS_FILE = "prompts.jsonl"

# What a user asks of a video, as the instruction sets of LLaVA-Video-178K and ShareGPT4Video ask it.
BUILT_IN_PROMPTS = (
    "Describe this video in detail.",
    "What actions happen in the video, in order?",
    "List the objects you can see and where they are.",
    "What changes between the beginning and the end of the video?",
    "How many people or animals appear, and what is each doing?",
    "Describe the setting: the place, the lighting and the time of day.",
)


@dataclass(frozen=True)
class Prompt:
    media: str  # the file, relative to the data folder, with "/" separators
    kind: str  # "video" | "image"
    prompt: str


def media_files(folder: Path) -> list[str]:
    """The images and videos anywhere under ``folder`` (hidden folders aside), relative, in name order."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if media_kind(path.name) is not None:
            found.append(relative.as_posix())
    return sorted(found)


def read_instructions(path: Path) -> tuple[str, ...]:
    """``--prompts FILE``: one instruction per non-blank line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--prompts {path}: cannot read it ({error}); give a UTF-8 text file, one instruction per line") from None
    instructions = tuple(line.strip() for line in lines if line.strip())
    if not instructions:
        raise UserError(f"--prompts {path} holds no instruction; write one per line")
    return instructions


def own_prompts(folder: Path, files: set[str]) -> dict[str, list[str]]:
    """The prompts ``prompts.jsonl`` gives each file; every bad row is named, then a UserError."""
    path = folder / PROMPTS_FILE
    if not path.is_file():
        return {}
    found: dict[str, list[str]] = {}
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{PROMPTS_FILE} line {number}: malformed JSON ({error.msg})")
            continue
        media = row.get("video", row.get("image")) if isinstance(row, dict) else None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(media, str) or not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"{PROMPTS_FILE} line {number}: a row is {{\"video\" or \"image\": file, \"prompt\": text}}")
            continue
        name = Path(media).as_posix()
        if name not in files:
            problems.append(f"{PROMPTS_FILE} line {number}: {media} is not an image or video under {folder}")
            continue
        found.setdefault(name, []).append(prompt.strip())
    if problems:
        raise UserError("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                        + f"; fix {path}")
    return found


def distill_prompts(folder: Path, instructions: tuple[str, ...] = BUILT_IN_PROMPTS) -> list[Prompt]:
    """Every (file, prompt) of the folder, in a fixed order: files by name, a file's own prompts as
    ``prompts.jsonl`` lists them."""
    files = media_files(folder)
    if not files:
        raise UserError(f"{folder} holds no image or video; give the folder with the media to distill on")
    own = own_prompts(folder, set(files))
    prompts = []
    for number, name in enumerate(files):
        kind = media_kind(name)
        for text in own.get(name) or [instructions[number % len(instructions)]]:
            prompts.append(Prompt(name, kind, text))
    return prompts
