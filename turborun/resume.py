"""What a resume sends again: the plan, computed from the journal before anything runs.

A node is resumed (not sent again) when the journal holds a success for it whose
fingerprint matches the task as it is now, and every node it depends on is resumed
too: a parent sent again may answer differently, so its descendants run again with it.
The supervisor and ``estimate`` use this one rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from turborun.graph import topological_order
from turborun.status import SUCCEEDED
from turborun.tasks import Task


@dataclass(frozen=True, slots=True)
class ResumePlan:
    resumed: frozenset[int]  # nodes whose journaled success stands
    changed: int  # journaled successes sent again because their task changed
    rerun_descendants: int  # journaled successes sent again because an ancestor runs


def plan_resume(
    deps: Sequence[Sequence[int]],
    tasks: Sequence[Task],
    previous: Mapping[str, tuple[str, str]],
    first: int = 0,
) -> ResumePlan:
    """The plan for nodes ``first`` onwards (``tasks[n]`` is node n; ``deps`` index the
    same nodes). ``previous``: custom_id → (status, fingerprint) from the journal. Nodes
    before ``first`` (added earlier) count as not resumed."""
    resumed: set[int] = set()
    changed = rerun = 0
    for node in topological_order(deps):
        if node < first:
            continue
        task = tasks[node]
        status, fingerprint = previous.get(task.custom_id, ("", ""))
        if status != SUCCEEDED:
            continue
        if fingerprint != task.fingerprint:
            changed += 1
        elif all(p in resumed for p in deps[node]):
            resumed.add(node)
        else:
            rerun += 1
    return ResumePlan(frozenset(resumed), changed, rerun)
