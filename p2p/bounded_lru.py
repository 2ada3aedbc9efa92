"""A mapping that holds at most `capacity` entries and forgets the least recently used.

Every table keyed by something a stranger chooses (a source address, a peer id, a node id) is
one of these, so a flood of fresh keys costs bounded memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """`get` and `set` count as use; `peek` does not. Over capacity the oldest entry goes
    (`on_evict(key, value)` is told). `evictable(key, value)`, when given, protects entries that
    may not be dropped yet (say, a peer with requests in flight): eviction skips them, and the
    map may then exceed its capacity until they become evictable."""

    def __init__(
        self,
        capacity: int,
        *,
        on_evict: Callable[[K, V], None] | None = None,
        evictable: Callable[[K, V], bool] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._on_evict = on_evict
        self._evictable = evictable
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._data.get(key)
        if value is None:
            return default
        self._data.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        return self._data.get(key)

    def set(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        self._shrink()

    def get_or_create(self, key: K, create: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = create()
            self.set(key, value)
        return value

    def pop(self, key: K) -> V | None:
        return self._data.pop(key, None)

    def oldest(self) -> tuple[K, V] | None:
        for item in self._data.items():
            return item
        return None

    def _shrink(self) -> None:
        if len(self._data) <= self.capacity:
            return
        for key in list(self._data):
            if len(self._data) <= self.capacity:
                return
            value = self._data[key]
            if self._evictable is not None and not self._evictable(key, value):
                continue
            del self._data[key]
            if self._on_evict is not None:
                self._on_evict(key, value)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))

    def items(self) -> list[tuple[K, V]]:
        return list(self._data.items())
