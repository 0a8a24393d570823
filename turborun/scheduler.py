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
import math
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
    """Heaps of (key, node) per bucket, and which bucket's head goes next.

    Entries may go stale (a node skipped while queued); the caller checks each popped
    node's state. Choosing the next node costs O(log buckets), not O(buckets): each
    bucket with ready nodes is in exactly one of three places,

    * listed: its head is a candidate in one heap of heads across buckets (``best``);
    * asleep until a time: the caller found it blocked (its budget, a rested endpoint)
      and said until when (``sleep``); ``wake_due`` lists it again then;
    * waiting for an event the caller names (an outcome of the bucket, room at an
      endpoint): ``wake`` / ``wake_waiting`` list it again.

    A push that becomes a sleeping bucket's new head wakes it (a cheaper request may
    fit where the old head did not). ``separate`` buckets are never listed: the caller
    takes from them by ``pop`` alone (Python steps, which have no budget)."""

    def __init__(self, separate: tuple[Hashable, ...] = ()) -> None:
        self._heaps: dict[Hashable, list[tuple[SortKey, int]]] = {}
        self._size = 0
        self._separate = frozenset(separate)
        self._heads: list[tuple[SortKey, int, int, Hashable]] = []  # lazy: check _listed
        self._listed: dict[Hashable, tuple[SortKey, int]] = {}
        self._asleep: dict[Hashable, float] = {}
        self._alarms: list[tuple[float, int, Hashable]] = []  # lazy: check _asleep
        self._waiting: dict[Hashable, str] = {}  # bucket → the event it waits for
        self._waiting_for: dict[str, set[Hashable]] = {}  # event → buckets
        self._seq = 0

    def __len__(self) -> int:
        return self._size

    def push(self, bucket: Hashable, key: SortKey, node: int) -> None:
        heap = self._heaps.get(bucket)
        if heap is None:
            heap = self._heaps[bucket] = []
        heapq.heappush(heap, (key, node))
        self._size += 1
        if bucket in self._separate or heap[0] != (key, node):
            return  # not its new head: where the bucket is stays right
        self._list(bucket)

    def count(self, bucket: Hashable) -> int:
        """Entries waiting in one bucket (stale ones included)."""
        heap = self._heaps.get(bucket)
        return len(heap) if heap else 0

    def heads(self) -> list[tuple[SortKey, int, Hashable]]:
        """The best entry of each non-empty bucket."""
        return [(h[0][0], h[0][1], b) for b, h in self._heaps.items() if h]

    def best(self) -> tuple[SortKey, int, Hashable] | None:
        """The best head among the listed buckets (None: no bucket is listed)."""
        heads = self._heads
        while heads:
            key, node, _, bucket = heads[0]
            if self._listed.get(bucket) == (key, node):
                return key, node, bucket
            heapq.heappop(heads)  # stale: the bucket moved on, slept or emptied
        return None

    def pop(self, bucket: Hashable) -> int:
        """Take the bucket's head; its next head (if any) is listed."""
        self._size -= 1
        heap = self._heaps[bucket]
        node = heapq.heappop(heap)[1]
        self._listed.pop(bucket, None)
        if heap and bucket not in self._separate:
            self._list(bucket)
        return node

    def sleep(self, bucket: Hashable, until: float, reason: str = "") -> None:
        """The bucket's head cannot go before ``until`` (math.inf: until ``wake`` or
        ``wake_waiting(reason)``)."""
        self._listed.pop(bucket, None)
        self._unwait(bucket)
        self._asleep.pop(bucket, None)
        if math.isinf(until):
            self._waiting[bucket] = reason
            self._waiting_for.setdefault(reason, set()).add(bucket)
            return
        self._asleep[bucket] = until
        self._seq += 1
        heapq.heappush(self._alarms, (until, self._seq, bucket))

    def wake_due(self, now: float) -> None:
        alarms = self._alarms
        while alarms and alarms[0][0] <= now:
            until, _, bucket = heapq.heappop(alarms)
            if self._asleep.get(bucket) == until:
                self._list(bucket)

    def next_alarm(self) -> float | None:
        """When the first sleeping bucket wakes (None: none sleeps until a time)."""
        alarms = self._alarms
        while alarms and self._asleep.get(alarms[0][2]) != alarms[0][0]:
            heapq.heappop(alarms)
        return alarms[0][0] if alarms else None

    def wake(self, bucket: Hashable) -> None:
        """Something changed for this bucket (an outcome): look at it again."""
        if bucket in self._asleep or bucket in self._waiting:
            self._list(bucket)

    def wake_waiting(self, reason: str | None = None) -> None:
        """List every bucket waiting for an event (of this ``reason``, or any)."""
        if reason is None:
            buckets = list(self._waiting)
        else:
            buckets = list(self._waiting_for.get(reason, ()))
        for bucket in buckets:
            self._list(bucket)

    def wake_all(self) -> None:
        for bucket in [*self._asleep, *self._waiting]:
            self._list(bucket)

    def _list(self, bucket: Hashable) -> None:
        self._asleep.pop(bucket, None)
        self._unwait(bucket)
        heap = self._heaps.get(bucket)
        if not heap:
            self._listed.pop(bucket, None)
            return
        key, node = heap[0]
        if self._listed.get(bucket) == (key, node):
            return
        self._listed[bucket] = (key, node)
        self._seq += 1
        heapq.heappush(self._heads, (key, node, self._seq, bucket))

    def drain(self, bucket: Hashable) -> list[int]:
        nodes = [node for _, node in self._heaps.pop(bucket, [])]
        self._size -= len(nodes)
        self._listed.pop(bucket, None)
        self._asleep.pop(bucket, None)
        self._unwait(bucket)
        return nodes

    def _unwait(self, bucket: Hashable) -> None:
        reason = self._waiting.pop(bucket, None)
        if reason is not None:
            self._waiting_for[reason].discard(bucket)

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

    def remove(self, match: Callable[[int], bool]) -> list[int]:
        """Take out the nodes ``match`` selects; the others keep their due times."""
        taken = [n for _, _, n in self._heap if match(n)]
        if taken:
            self._heap = [entry for entry in self._heap if not match(entry[2])]
            heapq.heapify(self._heap)
        return taken

    def drain(self, keep: Callable[[int], bool] | None = None) -> list[int]:
        nodes = [n for _, _, n in self._heap]
        self._heap.clear()
        return [n for n in nodes if keep is None or keep(n)]
