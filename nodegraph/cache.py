"""Ancestry-signature cache keys and a byte-budget LRU store of node outputs.

A node's key hashes its class, its literal inputs, its fingerprint and the keys of the nodes that
feed it, so a change invalidates exactly the downstream cone, identical subgraphs share one key,
and node ids never enter it. Outputs are stored as produced (a GPU tensor stays on its GPU).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BUDGET = 4 * 1024**3


def signature(
    class_type: str,
    literals: Mapping[str, Any],
    fingerprint: Hashable,
    sources: Mapping[str, tuple[str, int]],
) -> str:
    """A node's cache key from its class, literal inputs, fingerprint and its sources' keys.

    `literals` and `sources` come in the node class's input order, so no sorting is needed.
    """
    text = repr((class_type, tuple(literals.items()), fingerprint, tuple(sources.items())))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def size_of(value: Any) -> int:
    """Bytes of array data reachable from `value` (tensors, arrays; through containers).

    Anything with an integer `nbytes` counts (torch tensors, numpy arrays); lists, tuples, dicts
    and dataclasses are walked; an object may report its own size with `cache_nbytes()`.
    """
    total, seen, stack = 0, set(), [value]
    while stack:
        item = stack.pop()
        if id(item) in seen or item is None or isinstance(item, str | bytes | int | float | bool):
            if isinstance(item, bytes):
                total += len(item)
            continue
        seen.add(id(item))
        nbytes = getattr(item, "nbytes", None)
        if isinstance(nbytes, int):
            total += nbytes
        elif hasattr(item, "cache_nbytes"):
            total += int(item.cache_nbytes())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif dataclasses.is_dataclass(item):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return total


@dataclass(slots=True)
class Entry:
    """A node's stored result: its outputs in order and what it showed the user."""

    outputs: tuple[Any, ...]
    ui: Mapping[str, Any] = field(default_factory=dict)
    nbytes: int = 0


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int
    budget: int
    evictions: int


class Cache:
    """LRU over entries, evicting the least recently used once their bytes pass the budget."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET, max_entries: int = 1_000_000) -> None:
        if budget_bytes < 0 or max_entries < 0:
            raise ValueError("the cache budget cannot be negative")
        self.budget, self.max_entries = budget_bytes, max_entries
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry

    def put(self, key: str, entry: Entry) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._entries and (
                self._bytes > self.budget or len(self._entries) > self.max_entries
            ):
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self._evictions += 1

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits,
                self._misses,
                len(self._entries),
                self._bytes,
                self.budget,
                self._evictions,
            )
