"""Keys/values of earlier prompts (and answers), reused by a later prompt that starts the same way:
a follow-up question about a video, or another question with the same system prompt and video,
computes only its own tokens. Entries belong to one encoded video (the keys/values of every token,
the text before the video included, depend on the video through T2V)."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from .budget_lru import BudgetLru


@dataclass
class Prefix:
    video: Hashable  # the encoded video's cache key; None for text-only prompts
    ids: np.ndarray  # the tokens whose keys/values ``cache`` holds
    cache: object  # a transformers Cache (DynamicCache)


def cache_bytes(cache) -> int:
    return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values) if t is not None)


def common_length(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PrefixCache:
    def __init__(self, budget_bytes: int):
        self._entries: BudgetLru[Prefix] = BudgetLru(budget_bytes, lambda prefix: cache_bytes(prefix.cache))

    def lookup(self, video: Hashable, ids: Sequence[int], min_length: int) -> tuple[object | None, int]:
        """The longest cached prefix of ``ids`` for ``video``, of at least ``min_length`` tokens
        (where the video's positions end: a prefix must not cut through them) and leaving at least
        one token to compute: (a private copy of its cache, cropped to it; its length), or (None, 0)."""
        ids = np.asarray(ids)
        best, best_length = None, 0
        for key, prefix in self._entries.items():
            if prefix.video != video:
                continue
            length = min(common_length(prefix.ids, ids), len(ids) - 1)
            if length > best_length:
                best, best_length = key, length
        if best is None or best_length < max(min_length, 1):
            return None, 0
        prefix = self._entries.get(best)  # marks it recently used
        cache = copy.deepcopy(prefix.cache)
        if best_length < cache.get_seq_length():
            cache.crop(best_length - cache.get_seq_length())  # a negative count: tokens to drop
        return cache, best_length

    def store(self, video: Hashable, ids: Sequence[int], cache) -> None:
        """Keep ``cache`` (the keys/values of the first ``cache.get_seq_length()`` of ``ids``); an
        entry it extends is dropped."""
        ids = np.asarray(ids[: cache.get_seq_length()])
        for key, prefix in self._entries.items():
            if prefix.video == video and common_length(prefix.ids, ids) == len(prefix.ids):
                self._entries.pop(key)
        self._entries.put((video, ids.tobytes()), Prefix(video, ids, cache))

    @property
    def total_bytes(self) -> int:
        return self._entries.total_bytes

    def __len__(self) -> int:
        return len(self._entries)
