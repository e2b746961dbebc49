"""The byte budget of one `AgentReport`: a report whose JSON is larger has its longest lists cut.

Each list is bounded on its own (`MAX_ITEMS` entries of bounded strings), but together a hostile
guest can still fill several megabytes per VMI and tick. `fit_report` halves the list taking the
most bytes (users, filesystems, interfaces), again and again, until the report fits, and says so in
`errors["report"]`. The agent's command list is never cut: it is bounded by `MAX_ITEMS` already, and a
cut one would make a supported agent look as if it lacked the basic commands.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from pydantic import BaseModel

from collectors.metrics import REPORTS_TRIMMED
from schemas.codec import encode
from schemas.events import AgentReport

#: Largest JSON of one `AgentReport`, in bytes.
AGENT_REPORT_BUDGET = 512 * 1024
#: The error key naming what was cut.
REPORT_ERROR = "report"
#: Room kept for the `errors["report"]` note itself.
_NOTE_ROOM = 256
#: The lists that may be cut, by their JSON names (never `supportedCommands`).
TRIMMABLE = ("users", "filesystems", "interfaces")


def fit_report(report: AgentReport, budget: int = AGENT_REPORT_BUDGET) -> AgentReport:
    """`report` itself when its JSON fits `budget` bytes; otherwise a copy with its longest lists cut."""
    size = len(encode(report))
    if size <= budget:
        return report
    lists = _lists(report)
    item_sizes = {name: [len(orjson.dumps(item.model_dump(mode="json"))) + 1 for item in items]
                  for name, items in lists.items()}
    kept = {name: len(items) for name, items in lists.items()}
    excess = size - budget + _NOTE_ROOM
    while excess > 0:
        name = max(TRIMMABLE, key=lambda n: sum(item_sizes[n][: kept[n]]))
        if kept[name] == 0:
            break  # nothing left to cut: the rest is bounded field by field
        halved = kept[name] // 2
        excess -= sum(item_sizes[name][halved: kept[name]])
        kept[name] = halved
    cuts = ", ".join(f"{name} {len(lists[name])}→{kept[name]}" for name in TRIMMABLE
                     if kept[name] < len(lists[name]))
    REPORTS_TRIMMED.inc()
    return _cut(report, kept, f"trimmed {cuts} to fit {budget // 1024} KiB")


def _lists(report: AgentReport) -> dict[str, Sequence[BaseModel]]:
    return {
        "users": report.users or [],
        "filesystems": report.filesystems or [],
        "interfaces": report.interfaces or [],
    }


def _cut(report: AgentReport, kept: dict[str, int], note: str) -> AgentReport:
    update: dict[str, object] = {"errors": {**report.errors, REPORT_ERROR: note}}
    if report.users is not None:
        update["users"] = report.users[: kept["users"]]
    if report.filesystems is not None:
        update["filesystems"] = report.filesystems[: kept["filesystems"]]
    if report.interfaces is not None:
        update["interfaces"] = report.interfaces[: kept["interfaces"]]
    return report.model_copy(update=update)
