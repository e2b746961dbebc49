"""The node's one queue of due times."""

from __future__ import annotations

from collectors.due import DueQueue


def test_keys_come_out_when_due_earliest_first() -> None:
    queue = DueQueue()
    queue.push("b", 2.0)
    queue.push("a", 1.0)
    queue.push("c", 3.0)
    assert queue.next_due() == 1.0
    assert queue.pop_due(0.5) == []
    assert queue.pop_due(2.0) == ["a", "b"]
    assert len(queue) == 1 and "c" in queue and "a" not in queue
    assert queue.next_due() == 3.0


def test_a_push_supersedes_the_earlier_time() -> None:
    queue = DueQueue()
    queue.push("a", 1.0)
    queue.push("a", 5.0)  # later now: the entry at 1.0 no longer counts
    assert queue.next_due() == 5.0
    assert queue.pop_due(2.0) == []
    queue.push("a", 0.5)  # earlier again
    assert queue.pop_due(2.0) == ["a"]
    assert queue.next_due() == float("inf")


def test_a_discarded_key_never_comes_out() -> None:
    queue = DueQueue()
    queue.push("a", 1.0)
    queue.push("b", 1.0)
    queue.discard("a")
    queue.discard("missing")
    assert queue.get("a") is None and queue.get("b") == 1.0
    assert queue.pop_due(9.0) == ["b"]


def test_superseded_entries_are_dropped_when_they_pile_up() -> None:
    queue = DueQueue(slack=2)
    for round_ in range(200):
        for key in ("a", "b", "c"):
            queue.push(key, 1000.0 - round_)
    assert len(queue._heap) <= 2 * len(queue) + 64 + 1  # rebuilt, not 600 entries
    assert queue.pop_due(1000.0) == ["a", "b", "c"]
