"""A sink's watch on its consumer's fetches: the last-answer gauge, and the health it reports."""

from __future__ import annotations

import time

import pytest
from aiokafka import TopicPartition

from sinks.consuming import FetchWatch
from sinks.metrics import REGISTRY

P0, P1 = TopicPartition("guestinfo.vmi.v1", 0), TopicPartition("guestinfo.vmi.v1", 1)


class Polled:
    """What the watch reads of a consumer: its partitions and when each last had a fetch answer (ms)."""

    def __init__(self, stamps: dict[TopicPartition, float | None]) -> None:
        self.stamps = stamps

    def assignment(self) -> set[TopicPartition]:
        return set(self.stamps)

    def last_poll_timestamp(self, partition: TopicPartition) -> float | None:
        return self.stamps[partition]


def gauge(sink: str) -> float | None:
    return REGISTRY.get_sample_value("guestinfo_sink_last_fetch_timestamp_seconds", {"sink": sink})


def test_unhealthy_until_the_brokers_first_answer() -> None:
    watch = FetchWatch("t-first", stale_after=30)
    assert watch.health() == (False, "t-first sink: no answer from Kafka yet")
    watch.observe(Polled({P0: None, P1: None}))  # assigned, no fetch answered yet
    assert watch.health()[0] is False
    now = time.time()
    watch.observe(Polled({P0: None, P1: now * 1000}))
    assert watch.health() == (True, "ok")
    assert gauge("t-first") == pytest.approx(now)


def test_the_newest_answer_of_any_partition_counts_and_never_goes_back() -> None:
    watch = FetchWatch("t-newest", stale_after=30)
    now = time.time()
    watch.observe(Polled({P0: (now - 100) * 1000, P1: (now - 1) * 1000}))
    assert watch.last == pytest.approx(now - 1)
    watch.observe(Polled({P0: (now - 50) * 1000}))  # a rebalance left an older partition
    assert watch.last == pytest.approx(now - 1)
    assert gauge("t-newest") == pytest.approx(now - 1)


def test_no_answer_for_longer_than_the_limit_is_unhealthy_and_says_how_long() -> None:
    watch = FetchWatch("t-stale", stale_after=30)
    watch.observe(Polled({P0: (time.time() - 45) * 1000}))
    assert watch.health() == (False, "t-stale sink: no answer from Kafka for 45s")


def test_a_consumer_without_partitions_has_nothing_to_wait_for() -> None:
    watch = FetchWatch("t-none", stale_after=30)
    watch.observe(Polled({}))
    assert watch.health() == (True, "ok")
