"""The node's own order of its reports (`collectors.clock`): this boot, and time since it, on every
report of a tick, domain and agent side alike."""

from __future__ import annotations

from pathlib import Path

from collectors import CollectorConfig, NodeCollector
from collectors.clock import BOOT_ID, observation
from tests.collectors.test_node import write_domains
from tests.collectors.ticks import collect_once


def test_an_observation_names_this_boot_and_never_goes_back() -> None:
    orders = [observation()[1] for _ in range(1000)]
    assert {order.boot for order in orders} == {BOOT_ID.read_text().strip()}
    uptimes = [order.uptime_ns for order in orders]
    assert uptimes == sorted(uptimes) and uptimes[-1] > uptimes[0]


async def test_every_report_of_a_tick_carries_the_ticks_order(tmp_path: Path) -> None:
    uri = write_domains(tmp_path / "node.xml", ["a", "b"])
    collector = NodeCollector(CollectorConfig(bootstrap_servers="unused:9092", libvirt_uris=[uri], node_name="n"))
    try:
        first = await collect_once(collector)
        second = await collect_once(collector)
    finally:
        await collector.close()
    for tick in (first, second):
        reports = [*tick.domains, *tick.agents]
        assert reports, "the tick reported"
        assert len({report.order for report in reports}) == 1, "one order per tick, both sides"
    assert second.agents[0].order is not None and first.agents[0].order is not None
    assert second.agents[0].order.uptime_ns > first.agents[0].order.uptime_ns
