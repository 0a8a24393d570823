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


def test_best_head_across_buckets_skips_sleeping_ones_until_they_wake():
    q = ReadyQueue()
    q.push("a", (0,), 1)
    q.push("b", (1,), 2)
    q.push("c", (2,), 3)
    assert q.best() == ((0,), 1, "a")
    q.sleep("a", 5.0)  # blocked by its budget until t=5
    q.sleep("b", float("inf"), "endpoint")  # until an endpoint has room
    assert q.best() == ((2,), 3, "c")
    assert q.next_alarm() == 5.0
    q.wake_due(4.9)
    assert q.best() == ((2,), 3, "c")
    q.wake_due(5.0)
    assert q.best() == ((0,), 1, "a")
    q.wake_waiting("outcome")  # not what b waits for
    assert q.pop("a") == 1 and q.best() == ((2,), 3, "c")
    q.wake_waiting("endpoint")
    assert q.best() == ((1,), 2, "b")
    assert len(q) == 2


def test_a_new_head_wakes_its_sleeping_bucket_and_pop_lists_the_next():
    q = ReadyQueue()
    q.push("a", (5,), 1)
    q.sleep("a", 100.0)
    q.push("a", (9,), 2)  # not the head: a stays asleep
    assert q.best() is None
    q.push("a", (1,), 3)  # a better head (it may cost less): look again now
    assert q.best() == ((1,), 3, "a")
    assert q.pop("a") == 3
    assert q.best() == ((5,), 1, "a")
    assert q.next_alarm() is None  # the old alarm went stale


def test_separate_buckets_are_never_listed():
    q = ReadyQueue(separate=("fn",))
    q.push("fn", (0,), 1)
    q.push("x", (3,), 2)
    assert q.best() == ((3,), 2, "x")
    assert q.count("fn") == 1 and q.pop("fn") == 1
