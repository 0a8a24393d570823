"""The DAG of nodes: placeholder, being written."""

from __future__ import annotations


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
