from turborun.scheduler import ReadyQueue, Timers, sort_key


def _order(strategy, items):
    q = ReadyQueue()
    for node, (priority, rank, tokens) in enumerate(items):
        q.push("b", sort_key(strategy, priority, rank, tokens, node), node)
    return [q.pop("b") for _ in items]


ITEMS = [(10, 1.0, 500), (10, 9.0, 10), (10, 9.0, 20), (100, 0.1, 1)]


def test_critical_path_order_priority_then_rank_then_tokens_then_file():
    assert _order("critical-path", ITEMS) == [3, 2, 1, 0]


def test_tokens_order_largest_first_after_priority():
    assert _order("tokens", ITEMS) == [3, 0, 2, 1]


def test_fifo_order_is_file_order_after_priority():
    assert _order("fifo", ITEMS) == [3, 0, 1, 2]


def test_heads_one_per_bucket():
    q = ReadyQueue()
    q.push("a", (1,), 1)
    q.push("a", (0,), 2)
    q.push("b", (5,), 3)
    assert sorted((n, b) for _, n, b in q.heads()) == [(2, "a"), (3, "b")]
    assert len(q) == 3
    assert q.drain("a") and len(q) == 1


def test_timers_fire_in_due_order():
    t = Timers()
    t.add(5.0, 1)
    t.add(2.0, 2)
    t.add(9.0, 3)
    assert t.next_due() == 2.0
    assert t.pop_due(6.0) == [2, 1]
    assert len(t) == 1
