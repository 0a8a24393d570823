from turborun.graph import (
    FAILED,
    READY,
    SKIPPED,
    SUCCEEDED,
    Graph,
    find_cycle,
    longest_path,
    topological_order,
)


def test_find_cycle_names_members_in_order():
    cycle = find_cycle({"a": ("b",), "b": ("c",), "c": ("a",), "d": ()})
    assert cycle is not None
    assert sorted(cycle) == ["a", "b", "c"]
    start = cycle.index("a")
    assert cycle[start:] + cycle[:start] == ["a", "b", "c"]


def test_find_cycle_self_dependency_and_none():
    assert find_cycle({"a": ("a",)}) == ["a"]
    assert find_cycle({"a": ("b",), "b": (), "c": ("a", "b")}) is None


def test_ranks_are_critical_path_to_the_end():
    g = Graph()
    # 0 -> 1 -> 3, 0 -> 2 -> 3 ; durations 1, 5, 2, 1
    ready = g.add_many([(), (0,), (0,), (1, 2)], [1, 5, 2, 1])
    assert ready == [0]
    assert g.rank_s == [7, 6, 3, 1]


def test_release_only_when_all_dependencies_succeeded():
    g = Graph()
    g.add_many([(), (), (0, 1)], [1, 1, 1])
    assert g.succeed(0) == []
    assert g.succeed(1) == [2]
    assert g.state[2] == READY


def test_failure_skips_descendants_transitively():
    g = Graph()
    g.add_many([(), (0,), (1,), (), (3,)], [1] * 5)
    skipped = g.fail(0)
    assert sorted(skipped) == [1, 2]
    assert g.state[0] == FAILED and g.state[2] == SKIPPED
    assert g.succeed(3) == [4]


def test_added_leaf_raises_ancestor_ranks():
    g = Graph()
    g.add_many([(), (0,)], [1, 1])
    node, ready = g.add((1,), 10)
    assert (node, ready) == (2, False)
    assert g.rank_s == [12, 11, 10]


def test_leaf_added_after_parent_failed_is_skipped():
    g = Graph()
    g.add_many([()], [1])
    g.fail(0)
    node, ready = g.add((0,), 1)
    assert not ready and g.state[node] == SKIPPED


def test_leaf_added_after_parent_succeeded_is_ready():
    g = Graph()
    g.add_many([()], [1])
    g.succeed(0)
    node, ready = g.add((0,), 1)
    assert ready and g.state[node] == READY and g.state[0] == SUCCEEDED


def test_longest_path_and_topological_order():
    deps = [(1,), (), (0, 1)]
    order = topological_order(deps)
    assert order.index(1) < order.index(0) < order.index(2)
    assert longest_path(deps, [2.0, 3.0, 4.0]) == 9.0
