"""The resume plan: which journaled successes stand, and why others are sent again."""

from __future__ import annotations

from turborun.resume import plan_resume
from turborun.tasks import tasks_from_dicts
from turborun.tokens import TokenEstimator


def _tasks(*specs: tuple[str, list[str]]):
    items = [{"custom_id": cid, "fn": "steps:noop", "depends_on": deps} for cid, deps in specs]
    tasks = tasks_from_dicts(items, TokenEstimator()).tasks
    index = {t.custom_id: i for i, t in enumerate(tasks)}
    return tasks, [tuple(index[d] for d in t.depends_on) for t in tasks]


def test_a_changed_task_runs_again_with_its_descendants_and_nothing_else() -> None:
    tasks, deps = _tasks(("a", []), ("b", ["a"]), ("c", ["b"]), ("d", []), ("e", ["a"]))
    fp = {t.custom_id: t.fingerprint for t in tasks}
    previous = {
        "a": ("succeeded", fp["a"]),
        "b": ("succeeded", "an older fingerprint"),  # its task changed
        "c": ("succeeded", fp["c"]),  # its parent runs again, so it does
        "d": ("failed", fp["d"]),
        "e": ("succeeded", fp["e"]),
    }
    plan = plan_resume(deps, tasks, previous)
    assert plan.resumed == {0, 4}  # a and e
    assert (plan.changed, plan.rerun_descendants) == (1, 1)


def test_nodes_before_first_are_not_planned_and_do_not_vouch_for_their_children() -> None:
    tasks, deps = _tasks(("a", []), ("b", ["a"]))
    previous = {t.custom_id: ("succeeded", t.fingerprint) for t in tasks}
    assert plan_resume(deps, tasks, previous).resumed == {0, 1}
    plan = plan_resume(deps, tasks, previous, first=1)
    assert plan.resumed == frozenset() and plan.rerun_descendants == 1
