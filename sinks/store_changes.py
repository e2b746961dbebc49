"""What one change of the merged topic writes to the store: the VMI's row and its watch events.

Every write takes the next number of the store's write sequence (one counter for all VMIs). The
GuestInfo object of a row carries, as its resourceVersion, the number of the write that last changed
the object; a write that changes only what the object does not show (filesystem usage) does not
change it. Each object change is also appended to the change log as the watch event Kubernetes would
send: ADDED, MODIFIED, or DELETED (carrying the last state). A new uid under the same name is a new
object: the old one is DELETED and the new one ADDED. Every log entry keeps the state just before it
(`prev_body`), so the state of the whole collection at any logged resource version can be rebuilt:
it is what each object changed since then held before its first change (docs/guestinfo-api.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from schemas.vmi import VMIRecord
from sinks.guestinfos import encode_guestinfo, guestinfo, selectable_fields
from sinks.store import Change, Tombstone

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"

#: The store column holding each selectable field (the row's own text, compared by `=` and `!=`).
FIELD_COLUMNS: dict[str, str] = {
    "metadata.name": "name",
    "metadata.namespace": "namespace",
    "status.nodeName": "node_name",
    "status.guestOSInfo.id": "os_id",
    "status.guestOSInfo.versionId": "os_version_id",
    "status.guestOSInfo.kernelRelease": "kernel_release",
    "status.hostname": "hostname",
    "status.agentVersion": "agent_version",
    "status.agentConnected": "agent_connected",
}
#: The field columns that are not part of the key, in the order the backends write them.
FIELD_ONLY_COLUMNS = tuple(column for column in FIELD_COLUMNS.values() if column not in ("namespace", "name"))


@dataclass(frozen=True, slots=True)
class StoredVMI:
    """What a write needs to know of the row it replaces."""

    revision: int
    uid: str
    body: bytes
    object_seq: int
    created_at: float


@dataclass(frozen=True, slots=True)
class RowWrite:
    """A VMI's new row: the record, its write number, and its GuestInfo with the selectable fields."""

    record: VMIRecord
    seq: int
    object_seq: int
    created_at: float
    body: bytes
    fields: dict[str, str]


def field_values(fields: dict[str, str]) -> tuple[str, ...]:
    """The values of `FIELD_ONLY_COLUMNS`, in order, from a GuestInfo's `selectable_fields`."""
    by_column = {FIELD_COLUMNS[name]: value for name, value in fields.items()}
    return tuple(by_column[column] for column in FIELD_ONLY_COLUMNS)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One watch event in the change log; `body` is the object it carries (without resourceVersion,
    which is `seq`), `prev_body` and `prev_seq` the object before it (None and 0 when there was none)."""

    seq: int
    type: str
    namespace: str
    name: str
    body: bytes
    prev_body: bytes | None
    prev_seq: int


@dataclass(slots=True)
class Plan:
    """What to write for one change: the new row (or a deletion) and the log entries."""

    last_seq: int
    row: RowWrite | None = None
    delete: bool = False
    entries: list[LogEntry] = field(default_factory=list)


def row_of(record: VMIRecord, seq: int, object_seq: int, created_at: float) -> RowWrite:
    """A VMI's row for `record`: its GuestInfo (created at `created_at`) and selectable fields."""
    obj = guestinfo(record, created_at)
    return RowWrite(record, seq, object_seq, created_at, encode_guestinfo(obj), selectable_fields(obj))


def plan_change(change: Change, stored: StoredVMI | None, last_seq: int, now: float) -> Plan | None:
    """What `change` writes over `stored`, numbering writes after `last_seq`; None when it writes nothing
    (a deletion of nothing, or a record older than the stored one: delivery is at-least-once)."""
    if isinstance(change, Tombstone):
        if stored is None:
            return None
        seq = last_seq + 1
        gone = LogEntry(seq, DELETED, change.namespace, change.name, stored.body, stored.body, stored.object_seq)
        return Plan(seq, delete=True, entries=[gone])
    if stored is not None and change.revision < stored.revision:
        return None
    ref = change.vmi
    same_vmi = stored is not None and stored.uid == ref.uid
    created_at = stored.created_at if stored is not None and same_vmi else now
    row = row_of(change, 0, 0, created_at)
    body = row.body
    seq = last_seq + 1
    plan = Plan(seq)
    if stored is not None and not same_vmi:
        gone = LogEntry(seq, DELETED, ref.namespace, ref.name, stored.body, stored.body, stored.object_seq)
        plan.entries.append(gone)
        seq += 1
        stored = None
    if stored is None:
        plan.entries.append(LogEntry(seq, ADDED, ref.namespace, ref.name, body, None, 0))
        object_seq = seq
    elif body != stored.body:
        plan.entries.append(LogEntry(seq, MODIFIED, ref.namespace, ref.name, body, stored.body, stored.object_seq))
        object_seq = seq
    else:
        object_seq = stored.object_seq
    plan.last_seq = seq
    plan.row = replace(row, seq=seq, object_seq=object_seq)
    return plan


Key = tuple[str, str]


def change_key(change: Change) -> Key:
    """(namespace, name) of a change."""
    if isinstance(change, Tombstone):
        return change.namespace, change.name
    return change.vmi.namespace, change.vmi.name


@dataclass(slots=True)
class BatchPlan:
    """What a batch writes: each touched VMI's final row (None: deleted), the log entries in order,
    the last write number and how many changes wrote something."""

    last_seq: int
    rows: dict[Key, RowWrite | None] = field(default_factory=dict)
    entries: list[LogEntry] = field(default_factory=list)
    changed: int = 0


def plan_batch(changes: Sequence[Change], stored: dict[Key, StoredVMI], last_seq: int, now: float) -> BatchPlan:
    """Plan `changes` in order over the `stored` rows of their VMIs (updated in place as planned)."""
    batch = BatchPlan(last_seq)
    for change in changes:
        key = change_key(change)
        plan = plan_change(change, stored.get(key), batch.last_seq, now)
        if plan is None:
            continue
        batch.changed += 1
        batch.last_seq = plan.last_seq
        batch.entries.extend(plan.entries)
        row = plan.row
        batch.rows[key] = row
        if row is None:
            stored.pop(key, None)
        else:
            stored[key] = StoredVMI(row.record.revision, row.record.vmi.uid, row.body, row.object_seq, row.created_at)
    return batch
