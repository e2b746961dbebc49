"""Process supervision for `guestinfo run`: one child process per stage.

Children start in order and stop in reverse order (SIGTERM, then SIGKILL after a grace period). A
child that exits on its own is restarted with a capped, doubling back-off, and the restart is logged;
one that exits with code 2 (`CONFIG_EXIT`: its configuration is wrong) is not restarted, since it
would only fail again: the pipeline stops instead (`unless_failed` raises `StageFailed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from plumbing.backoff import Backoff

log = logging.getLogger(__name__)

#: The exit code of a stage refusing its configuration (argparse's, and `guestinfo`'s UsageError).
CONFIG_EXIT = 2

T = TypeVar("T")


class StageFailed(RuntimeError):
    """A stage exited because of its configuration; restarting it would not help."""


@dataclass(frozen=True)
class ChildSpec:
    """One stage process: a name for the logs and the `guestinfo` sub-command line to run."""

    name: str
    args: list[str]

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "guestinfo", *self.args]


@dataclass
class Child:
    spec: ChildSpec
    #: Pauses before each restart in a row: 1 s doubling up to the supervisor's `max_backoff`.
    restart_backoff: Backoff
    process: asyncio.subprocess.Process | None = None
    stopping: bool = False
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def restarts(self) -> int:
        return self.restart_backoff.failures


class Supervisor:
    """Starts, watches, restarts and stops the stage processes of one pipeline."""

    def __init__(self, specs: list[ChildSpec], stop_grace: float = 10.0, max_backoff: float = 30.0):
        self.children = [Child(spec, Backoff(1.0, max_backoff)) for spec in specs]
        self.stop_grace = stop_grace
        self.max_backoff = max_backoff
        self.failed: asyncio.Future[Child] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        for child in self.children:
            await self._spawn(child)
            child.watcher = asyncio.create_task(self._watch(child), name=f"watch-{child.spec.name}")

    async def _spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.spec.argv, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        log.info("started %s (pid %d)", child.spec.name, child.process.pid)

    async def _watch(self, child: Child) -> None:
        while not child.stopping:
            assert child.process is not None
            code = await child.process.wait()
            if child.stopping:
                return
            if code == CONFIG_EXIT:
                log.error("%s exited with code %d: its configuration is wrong (see its log); not restarting it",
                          child.spec.name, code)
                if not self.failed.done():
                    self.failed.set_result(child)
                return
            delay = child.restart_backoff.next()
            log.error(
                "%s exited with code %s; restart #%d in %.0fs", child.spec.name, code, child.restarts, delay
            )
            await asyncio.sleep(delay)
            if not child.stopping:
                await self._spawn(child)

    async def unless_failed(self, work: Awaitable[T]) -> T:
        """`work`'s result, unless a stage fails for its configuration first: then `StageFailed`."""
        task = asyncio.ensure_future(work)
        waits: set[asyncio.Future[object]] = {task, self.failed}  # type: ignore[arg-type]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.failed.done():
            if task.done() and not task.cancelled():
                task.exception()  # the stage's failure is what is reported; this one is seen, not lost
            child = self.failed.result()
            raise StageFailed(f"{child.spec.name} refused its configuration (exit code {CONFIG_EXIT}); see its log")
        return task.result()

    async def stop(self) -> None:
        """Stop every child, last started first; idempotent."""
        for child in reversed(self.children):
            child.stopping = True
            if child.watcher is not None:
                child.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await child.watcher
            await self._terminate(child)

    async def _terminate(self, child: Child) -> None:
        if child.process is not None:
            await terminate(child.process, child.spec.name, self.stop_grace)


async def terminate(process: asyncio.subprocess.Process, name: str, grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; logs how it ended. Idempotent."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
        log.info("stopped %s (exit code %s)", name, process.returncode)
    except TimeoutError:
        log.warning("%s did not stop within %.0fs; killing it", name, grace)
        process.kill()
        await process.wait()
