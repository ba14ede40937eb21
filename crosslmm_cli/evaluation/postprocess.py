"""What lmms-eval does to a generation before scoring it, in its order: the model wrapper strips
white space, then the evaluator cuts reasoning blocks (its CLI default ``--reasoning_tags``).

Ported from lmms-eval 0.7.3 (``lmms_eval/api/reasoning.py``); ``tests/data/make_lmms_eval_golden.py``
runs lmms-eval's own functions on the same responses and the tests hold ours to them.
"""

from __future__ import annotations

import json

# lmms-eval's CLI default; "none" turns stripping off
DEFAULT_REASONING_TAGS = [["<think>", "</think>"], ["<analysis>", "</analysis>"]]


def parse_reasoning_tags(value: str | None) -> list[list[str]] | None:
    """``--reasoning-tags``: a JSON list of [start, end] pairs as lmms-eval takes it, or "none"."""
    if value is None:
        return DEFAULT_REASONING_TAGS
    if value.strip().lower() == "none":
        return None
    try:
        pairs = json.loads(value)
    except json.JSONDecodeError:
        pairs = None
    if not isinstance(pairs, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(tag, str) and tag for tag in pair) for pair in pairs
    ):
        from ..errors import UserError

        raise UserError(f"--reasoning-tags takes a JSON list of [start, end] pairs (lmms-eval's format) or none, "
                        f"got {value!r}")
    return pairs


def strip_reasoning_tags(text: str, tag_pairs: list[list[str]]) -> str:
    """Cut every start...end block; after a lone end tag (a template that opens the block in the
    prompt) keep only what follows it; strip white space."""
    result = text
    for start_tag, end_tag in tag_pairs:
        while start_tag in result and end_tag in result:
            start = result.find(start_tag)
            end = result.find(end_tag, start)
            if start == -1 or end == -1:
                break
            result = result[:start] + result[end + len(end_tag):]
        if end_tag in result and start_tag not in result:
            result = result.rsplit(end_tag, 1)[-1]
    return result.strip()


def filtered_response(raw: str, tag_pairs: list[list[str]] | None) -> str:
    """The text lmms-eval scores for a raw generation (its ``filtered_resps``)."""
    text = raw.strip()  # lmms-eval's model wrappers strip their generations
    return strip_reasoning_tags(text, tag_pairs) if tag_pairs else text
