"""A bounded cache that costs nothing on a hit.

Per-hit LRU bookkeeping (OrderedDict.move_to_end) would add to every query;
clearing a full dict throws away the hot entries along with a flood of
one-off names. Two generations do neither: `new` takes every insert; when it
is full it becomes `old` and a fresh `new` begins. A miss in `new` that finds
the key in `old` promotes it, so whatever was used since the last turnover
survives the next one. Memory is bounded by twice `cap` entries.

The hot path reads `cache.new.get(key)` directly and calls `promote()` only
on a miss.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TwoGen(Generic[K, V]):
    __slots__ = ("new", "old", "cap")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.new: dict[K, V] = {}
        self.old: dict[K, V] = {}

    def promote(self, key: K) -> V | None:
        """The entry from the previous generation, now in the current one."""
        value = self.old.pop(key, None)
        if value is not None:
            self.put(key, value)
        return value

    def get(self, key: K) -> V | None:
        value = self.new.get(key)
        return value if value is not None else self.promote(key)

    def put(self, key: K, value: V) -> None:
        if len(self.new) >= self.cap:
            self.old = self.new
            self.new = {}
        self.new[key] = value

    def items(self) -> list[tuple[K, V]]:
        """Every entry, least recently inserted or promoted first."""
        return [*self.old.items(), *self.new.items()]

    def __contains__(self, key: object) -> bool:
        return key in self.new or key in self.old

    def __len__(self) -> int:
        return len(self.new) + len(self.old)
