"""Keys/values of earlier prompts (and answers), reused by a later prompt that starts the same way:
a follow-up question about a video, or another question with the same system prompt and video,
computes only its own tokens. Entries belong to one encoded video (the keys/values of every token,
the text before the video included, depend on the video through T2V)."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import DynamicCache

from ..budget_lru import BudgetLru


@dataclass
class Prefix:
    video: Hashable  # the encoded video's cache key; None for text-only prompts
    ids: np.ndarray  # the tokens whose keys/values ``cache`` holds
    cache: object  # a transformers Cache (DynamicCache)


def cache_bytes(cache) -> int:
    return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values) if t is not None)


def sharing(cache: DynamicCache) -> DynamicCache:
    """A new cache object over the same key/value tensors. A DynamicCache grows, crops and selects
    rows by making new tensors (torch.cat, slicing, indexing) and rebinding its layers to them, never
    by writing into the old ones, so generating from it leaves ``cache`` as it was, without a copy."""
    shared = DynamicCache([(layer.keys[..., :0, :], layer.values[..., :0, :]) for layer in cache.layers])
    for mine, theirs in zip(shared.layers, cache.layers):
        mine.keys, mine.values = theirs.keys, theirs.values
    return shared


def common_length(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


BLOCK = 16  # tokens per hashed block of the index


def block_hashes(ids: np.ndarray) -> list[int]:
    """Chained hashes of the full blocks of ``ids``: the i-th names the first (i + 1) * BLOCK
    tokens (vLLM's automatic prefix caching keys its blocks the same way)."""
    hashes, running = [], 0
    for start in range(0, len(ids) - BLOCK + 1, BLOCK):
        running = hash((running, ids[start:start + BLOCK].tobytes()))
        hashes.append(running)
    return hashes


class PrefixCache:
    """Entries indexed by (video, block hash): a lookup follows the prompt's blocks through the
    index and compares tokens only with the entries that share its longest indexed prefix, however
    many entries there are."""

    def __init__(self, budget_bytes: int):
        self._entries: BudgetLru[Prefix] = BudgetLru(budget_bytes, lambda prefix: cache_bytes(prefix.cache),
                                                     on_evict=self._unindex)
        self._index: dict[tuple, set] = {}  # (video, block hash) -> keys of the entries starting with those blocks
        self._lock = threading.RLock()

    def _unindex(self, key, prefix: Prefix) -> None:
        with self._lock:
            for block in block_hashes(prefix.ids):
                holders = self._index.get((prefix.video, block))
                if holders is not None:
                    holders.discard(key)
                    if not holders:
                        del self._index[(prefix.video, block)]

    def _candidates(self, video: Hashable, ids: np.ndarray, deepest: bool = True) -> set:
        """Keys of the entries sharing the longest run of whole blocks with ``ids`` (or, not
        ``deepest``, at least its first block); none if none does."""
        found: set = set()
        for block in block_hashes(ids):
            holders = self._index.get((video, block))
            if not holders:
                break
            found = set(holders) if deepest else found | holders
        return set(found)

    def lookup(self, video: Hashable, ids: Sequence[int], min_length: int) -> tuple[object | None, int]:
        """The longest cached prefix of ``ids`` for ``video``, of at least ``min_length`` tokens
        (where the video's positions end: a prefix must not cut through them) and leaving at least
        one token to compute: (a private copy of its cache, cropped to it; its length), or (None, 0).
        A prefix shorter than one block is not looked for."""
        ids = np.asarray(ids)
        best, best_length = None, 0
        with self._lock:
            for key in self._candidates(video, ids):
                prefix = self._entries.get(key)
                if prefix is None:
                    continue
                length = min(common_length(prefix.ids, ids), len(ids) - 1)
                if length > best_length:
                    best, best_length = prefix, length
        if best is None or best_length < max(min_length, 1):
            return None, 0
        cache = sharing(best.cache)
        if best_length < cache.get_seq_length():
            cache.crop(best_length - cache.get_seq_length())  # a negative count: tokens to drop
        return cache, best_length

    def store(self, video: Hashable, ids: Sequence[int], cache) -> None:
        """Keep ``cache`` (the keys/values of the first ``cache.get_seq_length()`` of ``ids``); an
        entry it extends is dropped."""
        ids = np.asarray(ids[: cache.get_seq_length()])
        if len(ids) < BLOCK:
            return  # too short to be looked up
        key = (video, ids.tobytes())
        with self._lock:
            for other in self._candidates(video, ids, deepest=False):
                prefix = self._entries.get(other)
                if prefix is not None and other != key and common_length(prefix.ids, ids) == len(prefix.ids):
                    self._entries.pop(other)
                    self._unindex(other, prefix)
            for block in block_hashes(ids):
                self._index.setdefault((video, block), set()).add(key)
            self._entries.put(key, Prefix(video, ids, cache))
            if key not in self._entries:  # larger than the whole budget: not kept
                self._unindex(key, Prefix(video, ids, cache))

    @property
    def total_bytes(self) -> int:
        return self._entries.total_bytes

    def __len__(self) -> int:
        return len(self._entries)
