"""Listing GuestInfos from the store: at the newest write, or as they were at an earlier one.

A page at resource version S is read in one snapshot from two sources:
- rows whose object has not changed since S (`object_seq <= S`): their object is the one of S;
- the objects changed since S: for each, the state before its first change after S (`prev_body` of
  that log entry), if it existed then.
That needs every log entry after S; once compaction removed some, S is too old (`ResourceExpired`),
as a Kubernetes continue token is after etcd compaction.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from sinks.guestinfos import selectable_fields
from sinks.selectors import Term, matches
from sinks.store_changes import FIELD_COLUMNS

Key = tuple[str, str]


class ResourceExpired(Exception):
    """The resource version asked for is older than the oldest the change log still holds."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One page of a list: `namespace` (None: every namespace), field selector terms, at most `limit`
    objects (0: all) after the key `after`, at resource version `at` (None: the newest)."""

    namespace: str | None = None
    terms: tuple[Term, ...] = ()
    limit: int = 0
    after: Key | None = None
    at: int | None = None


@dataclass(frozen=True, slots=True)
class Listed:
    namespace: str
    name: str
    resource_version: int
    body: bytes  # without resourceVersion


@dataclass(frozen=True, slots=True)
class ListPage:
    """The objects of a page, in key order; `resource_version` is the version the page shows; `more`
    says whether objects follow the last one."""

    resource_version: int
    items: list[Listed]
    more: bool


def where_clause(query: ListQuery, placeholder: Iterable[str]) -> tuple[str, list[object]]:
    """`AND ...` conditions on the namespace, the key and the field selector, with their parameters.

    `placeholder` yields the backend's parameter markers in order (`?` or `$1`, `$2`, ...).
    """
    marks = iter(placeholder)
    clauses: list[str] = []
    params: list[object] = []
    if query.namespace is not None:
        clauses.append(f"namespace = {next(marks)}")
        params.append(query.namespace)
    if query.after is not None:
        clauses.append(f"(namespace, name) > ({next(marks)}, {next(marks)})")
        params.extend(query.after)
    for term in query.terms:
        clauses.append(f"{FIELD_COLUMNS[term.field]} {'=' if term.equal else '!='} {next(marks)}")
        params.append(term.value)
    return "".join(f" AND {clause}" for clause in clauses), params


def changed_since(
    entries: Sequence[tuple[str, str, bytes | None, int]], query: ListQuery
) -> list[Listed]:
    """The objects as they were before their first logged change: `entries` are (namespace, name,
    prev_body, prev_seq) in log order, already limited to the query's namespace and key range."""
    seen: set[Key] = set()
    listed: list[Listed] = []
    for namespace, name, prev_body, prev_seq in entries:
        key = (namespace, name)
        if key in seen:
            continue
        seen.add(key)
        if prev_body is None:
            continue
        if query.terms and not matches(query.terms, selectable_fields(orjson.loads(prev_body))):
            continue
        listed.append(Listed(namespace, name, prev_seq, bytes(prev_body)))
    return listed


def merge_page(unchanged: list[Listed], changed: list[Listed], query: ListQuery, version: int) -> ListPage:
    """The page of `query` from rows unchanged since `version` and the earlier states of changed ones."""
    items = sorted([*unchanged, *changed], key=lambda item: (item.namespace, item.name)) if changed else unchanged
    if query.limit and len(items) > query.limit:
        return ListPage(version, items[: query.limit], True)
    return ListPage(version, items, False)


# -- continue tokens -------------------------------------------------------------------------------


def encode_continue(version: int, after: Key) -> str:
    """The continue token of a page that ended at `after`; version 0 continues at the newest state."""
    data = orjson.dumps({"v": "guestinfo.kubevirt.io/v1alpha1", "rv": version, "start": list(after)})
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, Key]:
    """(version, last key) of a continue token; a token this server did not make is a `ValueError`."""
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        version, start = data["rv"], data["start"]
        if not isinstance(version, int) or not 0 <= version <= 2**63 - 1 or not (
            isinstance(start, list) and len(start) == 2
            and all(isinstance(part, str) and "\x00" not in part for part in start)
        ):
            raise ValueError("malformed")
    except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"continue key is not valid: {exc}") from exc
    return version, (start[0], start[1])
