"""A ``.json`` annotation file that is one big list (LLaVA-Video-178K, LLaVA-665K, ShareGPT4V and
M4-Instruct ship so), read without holding the list: one streaming pass finds where each item's
text starts and ends in the file, the spans are kept as a ``.npy`` array, and an item is read by
seeking to its span and parsing those bytes alone. The pass parses each item once with the
standard library's decoder and keeps only the current window of the file (a few MB); the array is
16 bytes an item, kept by :mod:`index_cache`.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import numpy as np

WINDOW_BYTES = 4 << 20  # the file is read this much at a time
WHITESPACE = " \t\r\n"
AFTER_ITEM = WHITESPACE + ",]"
MAX_ITEM_CHARACTERS = 64 << 20  # an annotation item longer than this is a mistake


class NotAJsonList(ValueError):
    """The file is not one whole JSON list (cut short, or not JSON); says where."""


def item_spans(path: Path, window_bytes: int = WINDOW_BYTES) -> np.ndarray:
    """(N, 2) int64 byte offsets [start, end) of each item of the JSON list in ``path``;
    :class:`NotAJsonList` when it is not one whole list."""
    decoder, spans = json.JSONDecoder(), []
    utf8 = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        bom = f.read(3)
        if bom != codecs.BOM_UTF8:
            f.seek(0)
        # the window of decoded text, the place read up to in it, and that place's offset in the file
        text, at, at_byte, finished = "", 0, f.tell(), False

        def more() -> bool:
            """Drop what is read, decode the next part of the file; False at its end."""
            nonlocal text, at, finished
            if finished:
                return False
            chunk = f.read(window_bytes)
            finished = not chunk
            text, at = text[at:] + utf8.decode(chunk, final=finished), 0
            return True

        def next_mark() -> str | None:
            """The next character that is not white space (None at the end of the file)."""
            nonlocal at, at_byte
            while True:
                while at < len(text) and text[at] in WHITESPACE:
                    at, at_byte = at + 1, at_byte + 1  # white space is ASCII: one byte each
                if at < len(text):
                    return text[at]
                if not more():
                    return None

        if next_mark() != "[":
            raise NotAJsonList("does not start with '['")
        at, at_byte = at + 1, at_byte + 1
        if next_mark() == "]":
            return np.zeros((0, 2), dtype=np.int64)
        while True:
            if next_mark() is None:
                raise NotAJsonList(f"ends after item {len(spans)} without ']' (cut short?)")
            while True:
                try:
                    _, end = decoder.raw_decode(text, at)
                    if finished or (end < len(text) and text[end] in AFTER_ITEM):  # a number may go on
                        break
                except json.JSONDecodeError:
                    if finished:
                        raise NotAJsonList(f"item {len(spans) + 1} is cut short or not JSON") from None
                if len(text) - at > MAX_ITEM_CHARACTERS:
                    raise NotAJsonList(f"item {len(spans) + 1} is not JSON, or longer than {MAX_ITEM_CHARACTERS >> 20} M "
                                       "characters")
                more()
            item_bytes = len(text[at:end].encode("utf-8"))
            spans.append((at_byte, at_byte + item_bytes))
            at, at_byte = end, at_byte + item_bytes
            mark = next_mark()
            if mark == "]":
                return np.array(spans, dtype=np.int64).reshape(-1, 2)
            if mark != ",":
                raise NotAJsonList(f"ends after item {len(spans)} without ']' (cut short?)" if mark is None
                                   else f"expected ',' or ']' after item {len(spans)}, found {mark!r}")
            at, at_byte = at + 1, at_byte + 1


def read_item(path: Path, span) -> object:
    """The item whose text lies at ``span`` of ``path``."""
    start, end = int(span[0]), int(span[1])
    with open(path, "rb") as f:
        f.seek(start)
        return json.loads(f.read(end - start).decode("utf-8"))
