"""`run_serve`: the store sink and the REST API in one process, over one store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from sinks.api import Health, make_app
from sinks.consuming import FetchWatch
from sinks.security import Guard, SecurityConfig, open_guard
from sinks.store import Store, describe_url, open_store
from sinks.store_sink import run_store_sink
from sinks.watch import ChangeFeed

log = logging.getLogger(__name__)


class ServeConfig(BaseModel):
    """Settings of `run_serve`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(description="Kafka bootstrap servers, `host:port[,host:port]`.")
    store_url: str = Field(
        description="Store URL: `sqlite:///ABSOLUTE/PATH.db` (embedded) or `postgresql://USER@HOST:PORT/DB`."
    )
    listen_host: str = Field(default="127.0.0.1", description="Address the REST API listens on.")
    listen_port: int = Field(
        default=8080, ge=0, le=65535, description="Port of the REST API; 0 picks a free port."
    )
    group_id: str = Field(default="guestinfo-store", min_length=1, description="Consumer group of the store sink.")
    security: SecurityConfig = Field(default_factory=SecurityConfig, description="TLS, authentication, authorization.")
    watch_history_seconds: float = Field(
        default=300.0, gt=0, description="How long GuestInfo changes stay in the change log for watches and paging."
    )
    watch_history_entries: int = Field(default=200_000, ge=1, description="At most this many changes stay in the log.")


class Listening(asyncio.Event):
    """A `ready` event that also tells where the API listens: `host`, `port` (the bound one), `url`.

    Pass one as `run_serve(config, ready=Listening())`; both are filled in before it is set, so a
    `listen_port` of 0 can be resolved to the real port. A plain `asyncio.Event` works too.
    """

    def __init__(self) -> None:
        super().__init__()
        self.host = ""
        self.port = 0
        self.tls = False

    @property
    def url(self) -> str:
        return base_url(self.host, self.port, self.tls)


def base_url(host: str, port: int, tls: bool) -> str:
    """The API's URL on `host:port` (an IPv6 address in brackets)."""
    return f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


async def start_api(
    store: Store, host: str, port: int, guard: Guard | None = None, feed: ChangeFeed | None = None,
    health: Health | None = None,
) -> tuple[web.AppRunner, int]:
    """Start the HTTP server (HTTPS when `guard` has TLS); returns the runner and the bound port.
    Watches follow `feed`, or a feed of the application's own; `/healthz` answers `health`."""
    guard = guard or Guard()
    app = make_app(store, None if guard.open else guard.middleware, feed, health=health)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=guard.tls.context if guard.tls else None)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    return runner, bound


async def serve_with(store: Store, config: ServeConfig, ready: asyncio.Event | None) -> None:
    """Run API and store sink on an open store until cancelled (or until the sink fails)."""
    feed = ChangeFeed(store)
    fetches = FetchWatch("store")
    async with open_guard(config.security, config.listen_host) as guard, background(
        feed.run(), keep_history(store, config.watch_history_seconds, config.watch_history_entries)
    ):
        runner, port = await start_api(store, config.listen_host, config.listen_port, guard, feed, fetches.health)
        scheme = "https" if guard.tls else "http"
        try:
            log.info("API listening on %s://%s:%d", scheme, config.listen_host, port)
            if isinstance(ready, Listening):
                ready.host, ready.port, ready.tls = config.listen_host, port, guard.tls is not None
            if ready is not None:
                ready.set()
            await run_store_sink(config.bootstrap_servers, config.group_id, store, feed.poke, fetches)
        finally:
            await runner.cleanup()
            log.info("API on %s://%s:%d stopped", scheme, config.listen_host, port)


@contextlib.asynccontextmanager
async def background(*work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `work` as tasks for the body of the `async with`; cancelled and awaited on the way out."""
    tasks = [asyncio.create_task(item) for item in work]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def keep_history(store: Store, seconds: float, entries: int) -> None:
    """Compact the change log every so often (a few times per retention period) until cancelled."""
    while True:
        await asyncio.sleep(min(30.0, seconds / 4))
        try:
            removed = await store.compact(seconds, entries)
        except Exception as exc:  # a failing store: logged, tried again next time
            log.warning("compacting the change log failed: %s", exc)
            continue
        if removed:
            log.debug("change log: %d entries older than %.0fs compacted", removed, seconds)


async def run_serve(config: ServeConfig, ready: asyncio.Event | None = None) -> None:
    """Open the store, then serve the REST API and run the store sink together until cancelled.

    Logs `API listening on http://HOST:PORT` and sets `ready` once listening (see `Listening` for
    learning the bound port). On cancellation the consumer is stopped, the HTTP server closed and
    the store closed, in that order. A store that cannot be opened raises `sinks.store.StoreError`.
    """
    store = await open_store(config.store_url)
    log.info("store open: %s", describe_url(config.store_url))
    try:
        await serve_with(store, config, ready)
    finally:
        await store.close()
        log.info("store closed")
