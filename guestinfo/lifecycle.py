"""Running one async stage in a process: stop cleanly on SIGINT/SIGTERM; things started and stopped."""

from __future__ import annotations

import abc
import asyncio
import logging
import signal
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self

log = logging.getLogger(__name__)


async def run_until_signalled(main: Coroutine[Any, Any, None], name: str) -> None:
    """Run `main` until it ends or a signal arrives; on a signal cancel it and wait for its cleanup."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    task = asyncio.create_task(main, name=name)
    stopper = asyncio.create_task(stop.wait(), name=f"{name}-signals")
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            log.info("%s: stopping", name)
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    log.info("%s: stopped", name)


class Service(abc.ABC):
    """Something this process starts and stops (a broker, the demo's agent): `async with service:` starts
    it and stops it on leaving, whatever happened inside."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
