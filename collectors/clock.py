"""When a report is observed: the wall clock, for display and for what the join judges across nodes,
and the node's own order (`schemas.events.ReportOrder`): the boot, and the time since it
(CLOCK_BOOTTIME), which never steps back within a boot, whatever NTP or a hand does to the wall clock,
and goes on across collector restarts (a container reads the host's)."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from pathlib import Path

from schemas.events import ReportOrder

log = logging.getLogger(__name__)

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def boot_id() -> str:
    """This boot's id; where the kernel does not say, one of this process (its order then holds within it)."""
    try:
        return BOOT_ID.read_text().strip()[:64] or _process_boot()
    except OSError as exc:
        log.warning("cannot read %s (%s): ordering reports within this process only", BOOT_ID, exc)
        return _process_boot()


def _process_boot() -> str:
    return f"process-{uuid.uuid4()}"


def observation() -> tuple[float, ReportOrder]:
    """Now: the wall clock, and the node's order."""
    return time.time(), ReportOrder(boot=boot_id(), uptime_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME))
