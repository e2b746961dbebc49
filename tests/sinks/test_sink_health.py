"""Kafka away: the sinks say so at /healthz (serve's API, a guest-metrics shard) and in the status sink's
health, within their limit, and are healthy again once it is back. Figures are printed (`-s`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from guestinfo.broker import ensure_topics, free_port
from sinks import consuming
from sinks.consuming import FetchWatch
from sinks.guest_metrics import GuestMetricsSink, serve_guest_metrics
from sinks.serve import Listening, ServeConfig, run_serve
from sinks.vmi_status import StatusConfig, run_status_sink
from tests.conftest import restartable
from tests.sinks.strict_kmock import StrictKubernetesEmulator

pytestmark = [pytest.mark.integration, pytest.mark.kmock(cls=StrictKubernetesEmulator)]

#: The sinks' limit in this test (30 s in production), seconds without an answer from Kafka.
STALE = 4.0


async def http_status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url) as response:
            return response.status
    except aiohttp.ClientError:
        return 0


async def until(checks: dict[str, Callable[[], object]], healthy: bool, timeout: float) -> dict[str, float]:
    """Seconds until each check says `healthy` (awaited when it returns an awaitable)."""
    started = time.monotonic()
    took: dict[str, float] = {}
    while len(took) < len(checks):
        assert time.monotonic() - started < timeout, f"still not {'healthy' if healthy else 'unhealthy'}: " \
            f"{sorted(set(checks) - set(took))} after {timeout:.0f}s"
        for name, check in checks.items():
            if name in took:
                continue
            answer = check()
            if asyncio.iscoroutine(answer):
                answer = await answer
            if answer == healthy:
                took[name] = time.monotonic() - started
        await asyncio.sleep(0.1)
    return took


async def test_the_sinks_say_when_kafka_goes_away_and_when_it_is_back(
    engine_name: str, kmock: StrictKubernetesEmulator, tmp_path: Path, unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consuming, "STALE_AFTER", STALE)
    broker = restartable(engine_name, free_port(), tmp_path / "kafka")
    await broker.start()
    tasks: list[asyncio.Task[None]] = []
    metrics_runner = None
    try:
        await ensure_topics(broker.bootstrap_servers)
        serving = Listening()
        tasks.append(asyncio.create_task(run_serve(ServeConfig(
            bootstrap_servers=broker.bootstrap_servers, store_url=f"sqlite://{tmp_path / 'store.db'}",
            listen_port=0, group_id=f"serve-{unique}"), serving)))
        status_watch = FetchWatch("status")
        tasks.append(asyncio.create_task(run_status_sink(StatusConfig(
            bootstrap_servers=broker.bootstrap_servers, kube_api=str(kmock.url), group_id=f"status-{unique}"),
            status_watch)))
        shard = GuestMetricsSink(broker.bootstrap_servers)
        tasks.append(asyncio.create_task(shard.run()))
        metrics_port = free_port()
        metrics_runner = await serve_guest_metrics(shard, "127.0.0.1", metrics_port)
        await asyncio.wait_for(serving.wait(), 30)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            async def api() -> bool:
                return await http_status(session, f"{serving.url}/healthz") == 200

            async def guest_metrics() -> bool:
                return await http_status(session, f"http://127.0.0.1:{metrics_port}/healthz") == 200

            def status() -> bool:
                return status_watch.health()[0]

            checks: dict[str, Callable[[], object]] = {"serve": api, "status": status, "guest-metrics": guest_metrics}
            await until(checks, healthy=True, timeout=60)
            for live in ("/livez", "/readyz"):
                assert await http_status(session, serving.url + live) == 200

            await broker.stop()
            gone = await until(checks, healthy=False, timeout=STALE + 30)
            for live in ("/livez", "/readyz"):  # the store's data is still served
                assert await http_status(session, serving.url + live) == 200
            await broker.start()
            await ensure_topics(broker.bootstrap_servers)  # Tansu comes back empty
            back = await until(checks, healthy=True, timeout=90)
        print(f"\n[{engine_name}] limit {STALE:.0f}s; unhealthy after Kafka stopped: "
              + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in sorted(gone.items()))
              + "; healthy again after it started: "
              + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in sorted(back.items())))
        assert all(seconds >= STALE - 1 for seconds in gone.values()), f"unhealthy before the limit: {gone}"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await broker.stop()
