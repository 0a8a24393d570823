"""The ready queue: which ready node goes next, and the retry timers.

Ready nodes wait in one heap per budget bucket (provider, model), so a bucket
that must wait for its rate limit never blocks the nodes of another. Across
buckets the best head whose bucket may spend now goes first.

Order (SPEC §5): higher priority first; then, by strategy,
  critical-path: longer critical path, more estimated tokens, file order
  tokens:        more estimated tokens, file order
  fifo:          file order
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable

SortKey = tuple[float, ...]


def sort_key(strategy: str, priority: int, rank_s: float, tokens: int, index: int) -> SortKey:
    """Smaller sorts first."""
    if strategy == "critical-path":
        return (-priority, -rank_s, -tokens, index)
    if strategy == "tokens":
        return (-priority, -tokens, index)
    if strategy == "fifo":
        return (-priority, index)
    raise ValueError(f"unknown strategy {strategy!r}")


class ReadyQueue:
    """Heaps of (key, node) per bucket. Entries may go stale (a node skipped while
    queued); the caller checks each popped node's state."""

    def __init__(self) -> None:
        self._heaps: dict[Hashable, list[tuple[SortKey, int]]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, bucket: Hashable, key: SortKey, node: int) -> None:
        heap = self._heaps.get(bucket)
        if heap is None:
            heap = self._heaps[bucket] = []
        heapq.heappush(heap, (key, node))
        self._size += 1

    def count(self, bucket: Hashable) -> int:
        """Entries waiting in one bucket (stale ones included)."""
        heap = self._heaps.get(bucket)
        return len(heap) if heap else 0

    def heads(self) -> list[tuple[SortKey, int, Hashable]]:
        """The best entry of each non-empty bucket."""
        return [(h[0][0], h[0][1], b) for b, h in self._heaps.items() if h]

    def pop(self, bucket: Hashable) -> int:
        self._size -= 1
        return heapq.heappop(self._heaps[bucket])[1]

    def drain(self, bucket: Hashable) -> list[int]:
        nodes = [node for _, node in self._heaps.pop(bucket, [])]
        self._size -= len(nodes)
        return nodes

    def buckets(self) -> list[Hashable]:
        return [b for b, h in self._heaps.items() if h]


class Timers:
    """Retry and re-queue timers: (due time, node). The supervisor's single wait
    sleeps until the earliest one."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, due: float, node: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, node))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[int]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[2])
        return due

    def drain(self, keep: Callable[[int], bool] | None = None) -> list[int]:
        nodes = [n for _, _, n in self._heap]
        self._heap.clear()
        return [n for n in nodes if keep is None or keep(n)]
