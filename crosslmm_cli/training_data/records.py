"""One training sample as a source reads it, and the text conventions every source shares.

Text fields, whichever the container (a tar's ``.json``, a parquet row, an annotation row):

- LLaVA conversations: ``"conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": "..."}, ...]`` (multi-turn allowed; ``<image>``/``<video>`` tags dropped:
  the visual input always goes first in the first user turn);
- question answering: ``"question"`` and ``"answer"``, with ``"options"`` for multiple choice (asked
  and answered as ``crosslmm eval jsonl`` scores it: crosslmm_cli.question_rows);
- captions (Stage I): ``"caption"`` (or a tar's ``.txt``, or a ``"text"`` column).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..question_rows import answer_target, question_prompt

CAPTION_PROMPTS = {"image": "Describe the image.", "video": "Describe the video."}
ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}
VISUAL_TAG = re.compile(r"<(image|video)>\n?")

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp")
VIDEO_SUFFIXES = ("mp4", "webm", "mkv", "avi", "mov", "m4v")


def media_kind(name: str) -> str | None:
    """``"image"``, ``"video"`` or None, from a file name's last suffix."""
    suffix = name.rsplit(".", 1)[-1].lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


@dataclass
class Media:
    kind: str  # "image" | "video"
    name: str  # file name (its suffix tells the decoder the format)
    data: bytes | None = None  # the file's bytes (a tar member, a parquet cell) ...
    path: Path | None = None  # ... or where it lies on disk


@dataclass
class Record:
    key: str  # "<shard name>/<key within the shard>": what samples.jsonl and reports name
    fields: dict  # the text fields (see the module docstring)
    media: list[Media] = field(default_factory=list)  # one video, or one or more images


def conversation(fields: dict, kind: str | None) -> list[dict]:
    """Chat messages ``{"role", "content": str}`` of a record's text fields (``kind``: its visual
    input, None for a text-only row); ValueError when they are none of the three conventions."""
    if "conversations" in fields:
        turns = fields["conversations"]
        if not isinstance(turns, list):
            raise ValueError("conversations must be a list of turns")
        messages = [{"role": ROLES[turn["from"]], "content": VISUAL_TAG.sub("", str(turn["value"]))} for turn in turns]
        if not messages or messages[0]["role"] != "user" or all(m["role"] != "assistant" for m in messages):
            raise ValueError("conversations must start with a human turn and hold a gpt turn")
        return messages
    for name in ("caption", "text"):
        if isinstance(fields.get(name), str) and fields[name].strip():
            if kind is None:
                raise ValueError("a caption without an image or video describes nothing")
            return [{"role": "user", "content": CAPTION_PROMPTS[kind]}, {"role": "assistant", "content": fields[name]}]
    if "question" in fields and "answer" in fields:  # asked as `crosslmm eval jsonl` asks it
        return [{"role": "user", "content": question_prompt(fields)}, {"role": "assistant", "content": answer_target(fields)}]
    raise ValueError(f"no conversations, caption or question/answer among its fields ({', '.join(sorted(fields)) or 'none'})")


# webdataset's rule (webdataset.tariterators.base_plus_ext): a member's key is its path up to the
# first dot of its file name, the rest is its extension; the members of one sample are consecutive.
MEMBER_NAME = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


def split_member(name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member name, None for a name without an extension."""
    match = MEMBER_NAME.match(name)
    return (match.group(1), match.group(2)) if match else None
