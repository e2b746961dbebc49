"""The join's table comes back whole after a restart, with its changelog sent in multi-record batches.

Tansu's ListOffsets(LATEST) under-reports a changelog partition whose newest batch holds several
records (broker-notes §1); recovery that trusted it would skip the tail and bring stale states back.
The next event of a VMI whose state came back stale would then produce revision 1 again.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from guestinfo.broker import EmbeddedBroker, ensure_topics
from schemas.codec import decode, encode
from schemas.events import AgentReport, DomainReport, VMIRef
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC, VMI_TOPIC
from schemas.vmi import VMIRecord
from streams.app import TABLE_NAME, JoinConfig, build_app
from streams.consumer import confirmed_highwaters
from tests.streams.test_join_worker import produce

pytestmark = pytest.mark.integration

VMIS = 300


async def started(config: JoinConfig) -> faust.App:
    app = build_app(config)
    app.finalize()
    await app.start()
    deadline = time.monotonic() + 60
    while not app.consumer.assignment() or app.rebalancing:
        assert time.monotonic() < deadline, "join worker got no partitions (or did not recover) within 60s"
        await asyncio.sleep(0.1)
    return app


async def latest_revisions(bootstrap: str, namespace: str, wanted: int) -> dict[str, int]:
    """The highest revision on the merged topic per VMI of `namespace`, once `wanted` records were read."""
    consumer = AIOKafkaConsumer(VMI_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    revisions: dict[str, int] = {}
    count = 0
    try:
        deadline = time.monotonic() + 60
        while count < wanted and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.value is None or not record.key or not record.key.startswith(f"{namespace}/".encode()):
                        continue
                    merged = decode(VMIRecord, record.value)
                    count += 1
                    revisions[merged.vmi.key] = max(revisions.get(merged.vmi.key, 0), merged.revision)
    finally:
        await consumer.stop()
    return revisions


async def test_table_recovers_every_state_after_a_restart(broker: EmbeddedBroker, unique: str, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap_servers
    await ensure_topics(bootstrap)
    namespace = f"ns-{unique}"
    config = JoinConfig(bootstrap_servers=bootstrap, app_id=f"join-{unique}", datadir=tmp_path)
    refs = [VMIRef(namespace=namespace, name=f"vm-{i:03d}", uid=f"u{i}") for i in range(VMIS)]

    app = await started(config)
    try:
        await produce(bootstrap, [(DOMAIN_TOPIC, r.key, encode(DomainReport(vmi=r, node="node-a", observed_at=10.0)))
                                  for r in refs])
        await produce(bootstrap, [(AGENT_TOPIC, r.key, encode(AgentReport(vmi=r, node="node-a", observed_at=11.0,
                                                                          connected=True, hostname="first")))
                                  for r in refs])
        before = await latest_revisions(bootstrap, namespace, 2 * VMIS)
        assert len(before) == VMIS and set(before.values()) == {2}
    finally:
        await app.stop()

    # The condition this test is about: the changelog's end as ListOffsets reports it is short of the
    # end a fetch sees, in at least one partition (otherwise the test would prove nothing on this broker).
    changelog = f"{config.app_id}-{TABLE_NAME}-changelog"
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        partitions = [TopicPartition(changelog, p) for p in sorted(probe.partitions_for_topic(changelog) or [])]
        reported = await probe.end_offsets(partitions)
    finally:
        await probe.stop()
    confirmed = await confirmed_highwaters([bootstrap], reported)
    assert any(confirmed[p] > reported[p] for p in partitions), f"ListOffsets was right: {reported}"

    app = await started(config)
    try:
        await produce(bootstrap, [(AGENT_TOPIC, r.key, encode(AgentReport(vmi=r, node="node-a", observed_at=12.0,
                                                                          connected=True, hostname="second")))
                                  for r in refs])
        after = await latest_revisions(bootstrap, namespace, 3 * VMIS)
    finally:
        await app.stop()
    stale = sorted(key for key, revision in after.items() if revision != 3)
    assert not stale, f"{len(stale)} VMIs restarted their revisions (state not recovered): {stale[:5]}"


def join_worker(bootstrap: str, app_id: str, state_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "guestinfo", "--state-dir", str(state_dir), "join", "--bootstrap-servers", bootstrap,
         "--app-id", app_id],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def stopped(worker: subprocess.Popen[bytes]) -> str:
    """Stop a worker; its log, to show when an assertion fails."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
    assert worker.stderr is not None
    return worker.stderr.read().decode(errors="replace")


async def test_a_second_worker_takes_partitions_over_with_their_states(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    """Two workers, changelog in multi-record batches: the rebalance neither crashes a worker (Faust's
    ConsistencyError when a persisted offset is above the highwater) nor loses a state."""
    bootstrap = broker.bootstrap_servers
    await ensure_topics(bootstrap)
    namespace = f"ns-{unique}"
    app_id = f"join-{unique}"
    refs = [VMIRef(namespace=namespace, name=f"vm-{i:03d}", uid=f"u{i}") for i in range(VMIS)]
    first = join_worker(bootstrap, app_id, tmp_path / "a")
    second = None
    try:
        await produce(bootstrap, [(DOMAIN_TOPIC, r.key, encode(DomainReport(vmi=r, node="node-a", observed_at=10.0)))
                                  for r in refs])
        assert len(await latest_revisions(bootstrap, namespace, VMIS)) == VMIS
        second = join_worker(bootstrap, app_id, tmp_path / "b")
        await asyncio.sleep(20)  # the group rebalances (Tansu: about 10 s with a 6 s session)
        await produce(bootstrap, [(AGENT_TOPIC, r.key, encode(AgentReport(vmi=r, node="node-a", observed_at=11.0,
                                                                          connected=True, hostname="second")))
                                  for r in refs])
        after = await latest_revisions(bootstrap, namespace, 2 * VMIS)
        alive = (first.poll() is None, second.poll() is None)
    finally:
        logs = [stopped(w) for w in (first, second) if w is not None]
    assert alive == (True, True), f"a worker died: {[log[-2000:] for log in logs]}"
    assert "ConsistencyError" not in "".join(logs)
    stale = sorted(key for key, revision in after.items() if revision != 2)
    assert len(after) == VMIS and not stale, f"{len(stale)} VMIs lost their state: {stale[:5]}"
