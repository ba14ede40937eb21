"""A least-recently-used map bounded by the bytes its values hold (thread-safe): the server's
encodings and prefix caches, a training loader worker's decoded clips."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class BudgetLru(Generic[V]):
    """Values sized by ``size_of``; adding or growing one evicts the least recently used others until
    the total fits ``budget_bytes``. A value larger than the whole budget is not kept."""

    def __init__(self, budget_bytes: int, size_of: Callable[[V], int],
                 on_evict: Callable[[Hashable, V], None] | None = None):
        self.budget_bytes, self.size_of, self.on_evict = budget_bytes, size_of, on_evict
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.total_bytes = 0
        self.evictions = 0

    def __getstate__(self) -> dict:  # a loader's dataset holding one pickles into spawned workers
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Hashable, value: V) -> None:
        """Add or replace ``key``; also call it again after a value grew, to re-count its bytes."""
        size = self.size_of(value)
        with self._lock:
            if key in self._items:
                self.total_bytes -= self._items.pop(key)[1]
            if size > self.budget_bytes:
                return
            self._items[key] = (value, size)
            self.total_bytes += size
            while self.total_bytes > self.budget_bytes:
                old_key, (old_value, evicted) = self._items.popitem(last=False)
                self.total_bytes -= evicted
                self.evictions += 1
                if self.on_evict is not None:
                    self.on_evict(old_key, old_value)

    def pop(self, key: Hashable) -> None:
        with self._lock:
            if key in self._items:
                self.total_bytes -= self._items.pop(key)[1]

    def items(self) -> Iterator[tuple[Hashable, V]]:
        """A snapshot, least recently used first."""
        with self._lock:
            return iter([(key, value) for key, (value, _) in self._items.items()])

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)
