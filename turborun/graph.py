"""The DAG of request nodes: indegrees, release of ready nodes, failure propagation
and critical-path ranks.

Nodes are dense integers (their position in the input), so the hot paths index
lists instead of hashing strings. Nodes may be added while a run is going
(``Runner.submit``): a new node's dependencies must already exist, so a new node
is always a leaf and can never close a cycle. Task files are checked for cycles
before any node is added (``find_cycle``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from turborun.status import FAILED, SKIPPED, SUCCEEDED, Status

# A node's state: where it is in the run, then its Status once done (one vocabulary
# with the journal's; comparing these strings costs what comparing ints did).
WAITING, READY, RUNNING = "waiting", "ready", "running"


def find_cycle(deps: dict[str, tuple[str, ...]]) -> list[str] | None:
    """Members of one dependency cycle in order (a → b → ... → a), or None.

    Iterative DFS, O(V+E); ``deps`` maps id → ids it depends on (unknown ids ignored).
    """
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(deps, white)
    for root in deps:
        if color[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        color[root] = grey
        while stack:
            node, i = stack[-1]
            children = deps[node]
            if i < len(children):
                stack[-1] = (node, i + 1)
                child = children[i]
                state = color.get(child)
                if state is None:
                    continue
                if state == grey:
                    return path[path.index(child) :]
                if state == white:
                    color[child] = grey
                    stack.append((child, 0))
                    path.append(child)
            else:
                color[node] = black
                stack.pop()
                path.pop()
    return None


def longest_path(deps: Sequence[Sequence[int]], durations: Sequence[float]) -> float:
    """Length of the longest dependency chain (sum of durations), O(V+E).

    Nodes must be numbered so that dependencies come first in some topological
    order; ``Graph`` guarantees nothing about numbers, so this sorts first.
    """
    order = topological_order(deps)
    finish = [0.0] * len(deps)
    for node in order:
        start = max((finish[d] for d in deps[node]), default=0.0)
        finish[node] = start + durations[node]
    return max(finish, default=0.0)


def topological_order(deps: Sequence[Sequence[int]]) -> list[int]:
    n = len(deps)
    indegree = [len(d) for d in deps]
    children: list[list[int]] = [[] for _ in range(n)]
    for node, parents in enumerate(deps):
        for p in parents:
            children[p].append(node)
    order = [i for i in range(n) if indegree[i] == 0]
    for node in order:  # the list grows while we walk it
        for c in children[node]:
            indegree[c] -= 1
            if indegree[c] == 0:
                order.append(c)
    return order


class Graph:
    """Dependency bookkeeping for one run. Single-threaded: the supervisor owns it."""

    def __init__(self) -> None:
        self.deps: list[tuple[int, ...]] = []
        self.children: list[list[int]] = []
        self.waiting: list[int] = []  # dependencies not yet succeeded
        self.duration_s: list[float] = []
        self.rank_s: list[float] = []  # critical path from the node to the end, itself included
        self.state: list[str] = []

    def __len__(self) -> int:
        return len(self.deps)

    def add_many(self, deps: Sequence[Sequence[int]], durations: Sequence[float]) -> list[int]:
        """Add a batch of nodes (dependencies may point inside the batch, no cycles);
        return those ready at once. Ranks are computed for the whole graph in O(V+E)."""
        first = len(self.deps)
        for node_deps, duration in zip(deps, durations, strict=True):
            self.deps.append(tuple(node_deps))
            self.children.append([])
            self.duration_s.append(float(duration))
            self.rank_s.append(0.0)
            self.state.append(WAITING)
            self.waiting.append(0)
        ready: list[int] = []
        for node in range(first, len(self.deps)):
            waiting = 0
            for p in self.deps[node]:
                self.children[p].append(node)
                if self.state[p] != SUCCEEDED:
                    waiting += 1
            self.waiting[node] = waiting
        self._compute_ranks()
        for node in range(first, len(self.deps)):
            if self._blocked_by_failure(node):
                continue
            if self.waiting[node] == 0:
                self.state[node] = READY
                ready.append(node)
        return ready

    def add(self, deps: Sequence[int], duration_s: float) -> tuple[int, bool]:
        """Add one leaf node whose dependencies exist; (node, ready now).

        Ancestors' ranks grow along the new path only as far as they change, so a
        Runner feeding nodes one by one does not pay O(V+E) per node.
        """
        node = len(self.deps)
        self.deps.append(tuple(deps))
        self.children.append([])
        self.duration_s.append(float(duration_s))
        self.rank_s.append(float(duration_s))
        self.state.append(WAITING)
        self.waiting.append(sum(1 for p in deps if self.state[p] != SUCCEEDED))
        for p in deps:
            self.children[p].append(node)
        self._raise_ancestors(node)
        if self._blocked_by_failure(node):
            return node, False
        if self.waiting[node] == 0:
            self.state[node] = READY
            return node, True
        return node, False

    def _blocked_by_failure(self, node: int) -> bool:
        if any(self.state[p] in (FAILED, SKIPPED) for p in self.deps[node]):
            self.state[node] = SKIPPED
            return True
        return False

    def _raise_ancestors(self, node: int) -> None:
        stack = [node]
        while stack:
            child = stack.pop()
            for p in self.deps[child]:
                candidate = self.duration_s[p] + self.rank_s[child]
                if candidate > self.rank_s[p]:
                    self.rank_s[p] = candidate
                    stack.append(p)

    def _compute_ranks(self) -> None:
        order = topological_order(self.deps)
        rank = self.rank_s
        for node in reversed(order):
            best = 0.0
            for c in self.children[node]:
                if rank[c] > best:
                    best = rank[c]
            rank[node] = self.duration_s[node] + best

    def mark_running(self, node: int) -> None:
        self.state[node] = RUNNING

    def mark_ready(self, node: int) -> None:
        self.state[node] = READY

    def succeed(self, node: int) -> list[int]:
        """Record a success; return the dependents it releases (all their deps succeeded)."""
        self.state[node] = SUCCEEDED
        released = []
        for c in self.children[node]:
            self.waiting[c] -= 1
            if self.waiting[c] == 0 and self.state[c] == WAITING:
                self.state[c] = READY
                released.append(c)
        return released

    def fail(self, node: int, state: Status = FAILED) -> list[int]:
        """Record a failure; return every not-yet-finished descendant, now SKIPPED."""
        self.state[node] = state
        skipped = []
        stack = list(self.children[node])
        while stack:
            c = stack.pop()
            if self.state[c] in (WAITING, READY):
                self.state[c] = SKIPPED
                skipped.append(c)
                stack.extend(self.children[c])
        return skipped

    def descendants(self, nodes: Iterable[int]) -> set[int]:
        seen: set[int] = set()
        stack = list(nodes)
        while stack:
            for c in self.children[stack.pop()]:
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        return seen
