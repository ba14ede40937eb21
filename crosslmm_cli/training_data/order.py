"""Which sample is the n-th sample of a run: a pure function of (seed, sources, weights, n), so any
process, at any step, after any restart, finds the same answer without replaying the run.

Two levels, as MosaicML streaming orders its streams (shard order, then shuffle blocks):

- the **mixture**: sample n comes from source ``s`` drawn with probability ``weights[s]``; the draws
  are made in blocks of MIX_BLOCK, each from its own seeded generator, and the running count per
  source says which position of that source's stream sample n takes;
- each **source's stream**: epoch after epoch, its shards in a seeded order, cut into windows of
  WINDOW_SHARDS shards whose samples are shuffled together, so a batch draws from several shards
  while a loader worker reads only a few at a time. A source's epochs are independent of the other
  sources': a small source repeats while a large one is still in its first pass.

Only shard *counts* are needed to place a position, and only for the windows up to it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .sources import LRU, Source

MIX_BLOCK = 4096  # mixture draws per seeded generator
WINDOW_SHARDS = 4  # shards shuffled together in a source's stream


def generator(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


@dataclass
class Window:
    start: int  # the stream position of its first sample
    epoch: int
    number: int  # its place in the epoch
    shards: list[int]
    ends: np.ndarray  # cumulative sample counts of its shards

    @property
    def size(self) -> int:
        return int(self.ends[-1])


class SourceStream:
    """Position -> (shard, row) for one source."""

    def __init__(self, source: Source, seed: int, number: int, window_shards: int = WINDOW_SHARDS):
        self.source, self.seed, self.number, self.window_shards = source, seed, number, window_shards
        self.windows: list[Window] = []
        self.starts: list[int] = []
        self.end = 0  # positions before it are placed
        self.epoch, self.next_window, self.epoch_start = 0, 0, 0
        self.shard_order = self.epoch_shards(0)
        self.orders = LRU(4)  # the windows' sample permutations, made again when needed

    def epoch_shards(self, epoch: int) -> list[int]:
        return [int(s) for s in generator(self.seed, self.number, epoch).permutation(len(self.source.shards))]

    def extend(self) -> None:
        """Place the next window (its shards counted now, not before); a source whose whole epoch
        holds no sample is an error."""
        while True:
            first = self.next_window * self.window_shards
            if first >= len(self.shard_order):  # the epoch is done
                if self.end == self.epoch_start:
                    broken = "; ".join(list(self.source.broken.values())[:3])
                    raise UserError(f"source {self.source.spec!r} holds no sample" + (f" ({broken})" if broken else "")
                                    + "; fix its path or remove it from the recipe")
                self.epoch, self.next_window, self.epoch_start = self.epoch + 1, 0, self.end
                self.shard_order = self.epoch_shards(self.epoch)
                continue
            part = self.shard_order[first:first + self.window_shards]
            ends = np.cumsum([self.source.count(s) for s in part])
            self.next_window += 1
            if ends[-1]:
                self.windows.append(Window(self.end, self.epoch, self.next_window - 1, part, ends))
                self.starts.append(self.end)
                self.end += int(ends[-1])
                return

    def locate(self, position: int) -> tuple[int, int]:
        while position >= self.end:
            self.extend()
        window = self.windows[bisect.bisect_right(self.starts, position) - 1]
        order = self.orders.get_or_make(
            (window.epoch, window.number),
            lambda: generator(self.seed, self.number, window.epoch, window.number, 1).permutation(window.size))
        place = int(order[position - window.start])
        slot = int(np.searchsorted(window.ends, place, side="right"))
        return window.shards[slot], place - (int(window.ends[slot - 1]) if slot else 0)


class SampleOrder:
    """Sample number -> (source, position in its stream) -> (source, shard, row)."""

    def __init__(self, sources: list[Source], weights: list[float], seed: int, window_shards: int = WINDOW_SHARDS):
        total = float(sum(weights))
        self.sources, self.seed = sources, seed
        self.probabilities = np.array(weights, dtype=np.float64) / total
        self.streams = [SourceStream(s, seed, n, window_shards) for n, s in enumerate(sources)]
        self.block_counts = [np.zeros(len(sources), dtype=np.int64)]  # per source, draws before each block
        self.blocks = LRU(4)

    def draws(self, block: int) -> np.ndarray:
        return self.blocks.get_or_make(block, lambda: generator(self.seed, 2**32 - 1, block).choice(
            len(self.sources), size=MIX_BLOCK, p=self.probabilities))

    def source_position(self, sample: int) -> tuple[int, int]:
        block, within = divmod(sample, MIX_BLOCK)
        while len(self.block_counts) <= block:
            done = len(self.block_counts) - 1
            self.block_counts.append(self.block_counts[-1] + np.bincount(self.draws(done), minlength=len(self.sources)))
        draws = self.draws(block)
        source = int(draws[within])
        return source, int(self.block_counts[block][source] + np.count_nonzero(draws[:within] == source))

    def locate(self, source: int, position: int) -> tuple[int, int]:
        return self.streams[source].locate(position)
