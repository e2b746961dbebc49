"""The `guestinfo.kubevirt.io/v1alpha1` API: get, list and watch GuestInfos, their subresources,
Table output for kubectl, and discovery (docs/guestinfo-api.md).

Lists and watches take the query parameters of the Kubernetes API (fieldSelector, labelSelector,
limit, continue, resourceVersion, resourceVersionMatch, watch, allowWatchBookmarks,
sendInitialEvents, timeoutSeconds) with the same meanings and the same errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from sinks.guestinfos import (
    API_VERSION,
    FIELD_PATHS,
    GROUP,
    KIND,
    LIST_KIND,
    RESOURCE,
    SHORT_NAMES,
    SINGULAR,
    SUBRESOURCES,
    VERSION,
    column_definitions,
    partial_metadata,
    table_cells,
    with_resource_version,
)
from sinks.kube_status import JSON, status_body, status_response
from sinks.kubevirt_subresources import STORE_KEY, subresource_handler
from sinks.selectors import SelectorError, Term, labels_select_unlabelled, parse_field_selector
from sinks.store import Store
from sinks.store_listing import Listed, ListQuery, ResourceExpired, decode_continue, encode_continue
from sinks.watch import ChangeFeed, Follower, WatchEnded, WatchFilter

log = logging.getLogger(__name__)

FEED = web.AppKey("guestinfo-feed", ChangeFeed)
BOOKMARK_SECONDS = web.AppKey("guestinfo-bookmark-seconds", float)
WATCHES: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("guestinfo-watches")

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
#: Kubernetes ends a watch after --min-request-timeout (1800 s) times a random factor in [1, 2).
_WATCH_SECONDS = 1800.0
_INITIAL_PAGE = 1000
_INT64_MAX = 2**63 - 1
#: A larger `limit` lists everything in one page (the store's LIMIT takes a 64-bit number).
_LIMIT_CAP = 1 << 31


# -- discovery --------------------------------------------------------------------------------------


def api_resource_list() -> bytes:
    """The APIResourceList of `guestinfo.kubevirt.io/v1alpha1`: the resource and its subresources,
    all namespaced (the aggregator's discovery needs parent and subresources to agree)."""
    resources: list[dict[str, Any]] = [
        {
            "name": RESOURCE,
            "singularName": SINGULAR,
            "namespaced": True,
            "kind": KIND,
            "verbs": ["get", "list", "watch"],
            "shortNames": list(SHORT_NAMES),
            "categories": ["kubevirt"],
        }
    ]
    resources += [
        {"name": f"{RESOURCE}/{sub}", "singularName": "", "namespaced": True, "kind": KIND, "verbs": ["get"]}
        for sub in SUBRESOURCES
    ]
    return orjson.dumps({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION,
                         "resources": resources})


def api_group(group: str, versions: tuple[str, ...]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


# -- what the client asked for ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    """How to answer: "object" (the resource's own JSON), "table" or "metadata" (PartialObjectMetadata),
    with the meta.k8s.io version asked for."""

    form: str = "object"
    meta_version: str = "v1"

    @property
    def meta_api_version(self) -> str:
        return f"meta.k8s.io/{self.meta_version}"


def negotiate(accept: str) -> Output | None:
    """The first form of `accept` this server writes (JSON only); None when there is none."""
    if not accept.strip():
        return Output()
    for entry in accept.split(","):
        media, *raw_params = (part.strip() for part in entry.split(";"))
        params = dict(p.partition("=")[::2] for p in raw_params if "=" in p)
        if media not in ("application/json", "application/*", "*/*"):
            continue
        shape = params.get("as")
        if shape is None:
            return Output()
        if params.get("g") != "meta.k8s.io" or params.get("v") not in ("v1", "v1beta1"):
            continue
        if shape == "Table":
            return Output("table", params["v"])
        if shape in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            return Output("metadata", params["v"])
    return None


def bad_request(message: str) -> web.Response:
    return status_response(400, "BadRequest", message)


def invalid(field: str, value: str, detail: str) -> web.Response:
    message = f'{KIND}.{GROUP} is invalid: {field}: Invalid value: "{value}": {detail}'
    cause = {"reason": "FieldValueInvalid", "message": f'Invalid value: "{value}": {detail}', "field": field}
    return status_response(422, "Invalid", message, {"group": GROUP, "kind": KIND, "causes": [cause]})


def not_found(name: str) -> web.Response:
    details = {"name": name, "group": GROUP, "kind": RESOURCE}
    return status_response(404, "NotFound", f'{RESOURCE}.{GROUP} "{name}" not found', details)


def expired_body(message: str) -> bytes:
    return status_body(410, "Expired", message, {})


def _bool(query: Mapping[str, str], name: str) -> bool | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"invalid value {value!r} for {name}: expected true or false")


def _integer(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    return None if not value else _int64(value, f"value for {name}")


def _resource_version(text: str) -> int:
    return _int64(text, "resource version")


def _int64(text: str, what: str) -> int:
    """`text` as a number from 0 to 2**63 - 1 (what the store's integers hold), else a `ValueError`."""
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"invalid {what} {text!r}: expected an integer") from None
    if not 0 <= number <= _INT64_MAX:
        raise ValueError(f"invalid {what} {text!r}: must be between 0 and {_INT64_MAX}")
    return number


@dataclass(frozen=True, slots=True)
class Selection:
    """The objects a list or watch is about: namespace, field terms, and whether any can match."""

    namespace: str | None
    terms: tuple[Term, ...]
    possible: bool  # False: the label selector excludes every (unlabelled) GuestInfo


def selection(request: web.Request) -> Selection:
    namespace = request.match_info.get("namespace")
    terms = parse_field_selector(request.query.get("fieldSelector", ""), FIELD_PATHS)
    possible = labels_select_unlabelled(request.query.get("labelSelector", ""))
    return Selection(namespace, terms, possible)


# -- bodies -----------------------------------------------------------------------------------------


def object_bytes(item: Listed) -> bytes:
    return with_resource_version(item.body, item.resource_version)


def table_row(obj: dict[str, Any], output: Output, include: str, now: float) -> dict[str, Any]:
    row: dict[str, Any] = {"cells": table_cells(obj, now)}
    if include == "Object":
        row["object"] = obj
    elif include != "None":
        row["object"] = partial_metadata(obj, output.meta_api_version)
    return row


def table_body(objects: list[dict[str, Any]], output: Output, include: str, metadata: dict[str, Any]) -> bytes:
    now = time.time()
    return orjson.dumps({
        "kind": "Table",
        "apiVersion": output.meta_api_version,
        "metadata": metadata,
        "columnDefinitions": column_definitions(),
        "rows": [table_row(obj, output, include, now) for obj in objects],
    })


def list_body(items: list[Listed], output: Output, include: str, metadata: dict[str, Any]) -> bytes:
    if output.form == "table":
        return table_body([orjson.loads(object_bytes(item)) for item in items], output, include, metadata)
    if output.form == "metadata":
        objects = [partial_metadata(orjson.loads(object_bytes(item)), output.meta_api_version) for item in items]
        return orjson.dumps({"kind": "PartialObjectMetadataList", "apiVersion": output.meta_api_version,
                             "metadata": metadata, "items": objects})
    # The objects are stored as JSON: the list is written around them, never re-encoded.
    head = b'{"kind":"%s","apiVersion":"%s","metadata":%s,"items":[' % (
        LIST_KIND.encode(), API_VERSION.encode(), orjson.dumps(metadata))
    return head + b",".join(object_bytes(item) for item in items) + b"]}"


def object_body(body: bytes, output: Output, include: str, table_metadata: dict[str, Any]) -> bytes:
    """One GuestInfo (its bytes, with resourceVersion) in the form asked for: itself, a Table of one row
    (with `table_metadata`), or its PartialObjectMetadata. A get answers with it, and each watch event."""
    if output.form == "table":
        return table_body([orjson.loads(body)], output, include, table_metadata)
    if output.form == "metadata":
        return orjson.dumps(partial_metadata(orjson.loads(body), output.meta_api_version))
    return body


def _include(request: web.Request) -> str:
    include = request.query.get("includeObject", "Metadata") or "Metadata"
    if include not in ("None", "Metadata", "Object"):
        raise ValueError(f"invalid value {include!r} for includeObject: expected None, Metadata or Object")
    return include


# -- handlers ---------------------------------------------------------------------------------------


def requested_form(request: web.Request) -> tuple[Output, str] | web.Response:
    """The form (`Accept`) and `includeObject` a get, list or watch asks for, or the error answer."""
    output = negotiate(request.headers.get("Accept", ""))
    if output is None:
        return not_acceptable()
    try:
        return output, _include(request)
    except ValueError as exc:
        return bad_request(str(exc))


async def get_guestinfo(request: web.Request) -> web.StreamResponse:
    """GET .../namespaces/{namespace}/guestinfos/{name}."""
    form = requested_form(request)
    if isinstance(form, web.Response):
        return form
    output, include = form
    name = request.match_info["name"]
    namespace = request.match_info["namespace"]
    item = None if "\x00" in namespace + name else await request.app[STORE_KEY].get_guestinfo(namespace, name)
    if item is None:
        return not_found(name)
    body = object_body(object_bytes(item), output, include, {"resourceVersion": str(item.resource_version)})
    return web.Response(body=body, content_type=JSON)


def not_acceptable() -> web.Response:
    return status_response(
        406, "NotAcceptable", "only the following media types are accepted: application/json, "
        "application/json;as=Table;v=v1;g=meta.k8s.io, "
        "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
    )


async def list_or_watch(request: web.Request) -> web.StreamResponse:
    """GET .../guestinfos and .../namespaces/{namespace}/guestinfos: a list, or with ?watch a watch."""
    form = requested_form(request)
    if isinstance(form, web.Response):
        return form
    output, include = form
    try:
        chosen = selection(request)
        watching = _bool(request.query, "watch")
        limit = min(_integer(request.query, "limit") or 0, _LIMIT_CAP)
    except (SelectorError, ValueError) as exc:
        return bad_request(str(exc))
    if watching:
        return await watch(request, chosen, output, include)
    return await list_page(request, chosen, output, include, limit)


async def list_page(request: web.Request, chosen: Selection, output: Output, include: str, limit: int) -> web.Response:
    query = request.query
    version_text = query.get("resourceVersion", "")
    match = query.get("resourceVersionMatch", "")
    token = query.get("continue", "")
    store = request.app[STORE_KEY]
    at: int | None = None
    after = None
    try:
        if match not in ("", "Exact", "NotOlderThan"):
            return invalid("resourceVersionMatch", match, 'supported values: "Exact", "NotOlderThan"')
        if match and not version_text:
            return invalid("resourceVersionMatch", match,
                           "resourceVersionMatch is forbidden unless resourceVersion is provided")
        if token:
            if version_text:
                return bad_request("specifying resource version is not allowed when using continue")
            version, after = decode_continue(token)
            at = version or None
        elif version_text:
            version = _resource_version(version_text)
            newest = await store.resource_version()
            if version > newest:
                return too_large(version, newest)
            if match == "Exact":
                if not version:
                    return invalid("resourceVersionMatch", match,
                                   'resourceVersionMatch "exact" is forbidden for resourceVersion "0"')
                at = version
    except ValueError as exc:
        return bad_request(str(exc))
    if not chosen.possible:
        newest = await store.resource_version()
        return web.Response(body=list_body([], output, include, {"resourceVersion": str(newest)}), content_type=JSON)
    try:
        page = await store.list_guestinfos(ListQuery(chosen.namespace, chosen.terms, limit, after, at))
    except ResourceExpired as exc:
        if token:
            return continue_expired(exc, after)
        return status_response(410, "Expired", str(exc), {})
    metadata: dict[str, Any] = {"resourceVersion": str(page.resource_version)}
    if page.more and page.items:
        last = page.items[-1]
        metadata["continue"] = encode_continue(page.resource_version, (last.namespace, last.name))
    return web.Response(body=list_body(page.items, output, include, metadata), content_type=JSON)


def too_large(version: int, newest: int) -> web.Response:
    message = f"Too large resource version: {version}, current: {newest}"
    details = {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
               "retryAfterSeconds": 1}
    return status_response(504, "Timeout", message, details)


def continue_expired(exc: ResourceExpired, after: tuple[str, str] | None) -> web.Response:
    """410 for a continue token older than the change log, with a token that continues inconsistently."""
    message = (
        "The provided continue parameter is too old to display a consistent list result. You can start a new "
        "list without the continue parameter, or use the continue token in this response to retrieve the "
        "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
        "that were created, modified, or deleted between the time the first chunk was returned and now may show "
        "up in the list."
    )
    body = orjson.loads(status_body(410, "Expired", message, {}))
    if after is not None:
        body["metadata"] = {"continue": encode_continue(0, after)}
    return web.Response(status=410, body=orjson.dumps(body), content_type=JSON)


# -- watch ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchStart:
    """Where a watch starts: after resource version `after`; with `initial`, every object that
    matches at `after` is first sent as ADDED; with `initial_end_bookmark`, a bookmark marks the end.
    `requested` is the resourceVersion asked for, if any (it must not be newer than the store)."""

    after: int | None
    initial: bool
    initial_end_bookmark: bool
    requested: int | None = None


def watch_start(query: Mapping[str, str]) -> WatchStart | web.Response:
    """How a watch starts, as Kubernetes reads resourceVersion and sendInitialEvents."""
    try:
        send_initial = _bool(query, "sendInitialEvents")
        bookmarks = _bool(query, "allowWatchBookmarks")
        version_text = query.get("resourceVersion", "")
        version = _resource_version(version_text) if version_text else None
    except ValueError as exc:
        return bad_request(str(exc))
    match = query.get("resourceVersionMatch", "")
    if send_initial is not None:
        if not bookmarks:
            return invalid("sendInitialEvents", str(send_initial).lower(),
                           "sendInitialEvents is forbidden for watch unless allowWatchBookmarks=true")
        if match != "NotOlderThan":
            return invalid("resourceVersionMatch", match,
                           "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
    elif match:
        return invalid("resourceVersionMatch", match, "resourceVersionMatch is forbidden for watch")
    if send_initial:
        return WatchStart(None, True, True, version or None)
    if send_initial is False or version:
        return WatchStart(version or None, False, False, version or None)
    return WatchStart(None, True, False)


class WatchStream:
    """One watch's HTTP response: a line of JSON per event."""

    def __init__(self, response: web.StreamResponse, output: Output, include: str) -> None:
        self.response = response
        self.output = output
        self.include = include
        self.sent = 0

    async def send(self, event_type: str, obj: bytes) -> None:
        obj = object_body(obj, self.output, self.include, {})
        await self.response.write(b'{"type":"%s","object":%s}\n' % (event_type.encode(), obj))
        self.sent += 1

    async def bookmark(self, version: int, initial_end: bool = False) -> None:
        metadata: dict[str, Any] = {"resourceVersion": str(version)}
        if initial_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": KIND, "apiVersion": API_VERSION, "metadata": metadata}
        await self.response.write(b'{"type":"BOOKMARK","object":%s}\n' % orjson.dumps(obj))

    async def error(self, body: bytes) -> None:
        await self.response.write(b'{"type":"ERROR","object":%s}\n' % body)


async def watch(request: web.Request, chosen: Selection, output: Output, include: str) -> web.StreamResponse:
    start = watch_start(request.query)
    if isinstance(start, web.Response):
        return start
    try:
        timeout = _integer(request.query, "timeoutSeconds")
        bookmarks = bool(_bool(request.query, "allowWatchBookmarks"))
    except ValueError as exc:
        return bad_request(str(exc))
    if start.requested is not None:
        refused = await newer_than_the_store(request.app[STORE_KEY], start.requested)
        if refused is not None:
            return refused
    seconds = float(timeout) if timeout else _WATCH_SECONDS * (1 + random.random())
    response = web.StreamResponse(headers={"Content-Type": JSON, "Cache-Control": "no-cache, private"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    stream = WatchStream(response, output, include)
    deadline = asyncio.get_running_loop().time() + seconds
    watches, task = request.app[WATCHES], asyncio.current_task()
    if task is not None:
        watches.add(task)
    try:
        await follow(request, chosen, start, stream, bookmarks, deadline)
    except ConnectionResetError:
        pass  # the client went away
    except ResourceExpired as exc:
        await _last_event(stream, expired_body(str(exc)))
    except Exception as exc:  # the stream has begun: the error goes into it, as the apiserver's does
        log.error("watch %s failed: %s: %s", request.path_qs, type(exc).__name__, exc)
        await _last_event(stream, status_body(500, "InternalError", f"Internal error occurred: {exc}", {}))
    finally:
        watches.discard(task)
    return response


async def _last_event(stream: WatchStream, status: bytes) -> None:
    with contextlib.suppress(ConnectionResetError):
        await stream.error(status)


#: How long a watch or list from a resource version newer than the store waits for the store to reach it.
_CATCH_UP_SECONDS = 3.0


async def newer_than_the_store(store: Store, requested: int) -> web.Response | None:
    """None when the store has reached `requested` (waiting up to 3 s, as the apiserver waits for its
    cache); else a 410: a version from the future means the store was replaced (a new database, a reset
    state directory), and the client must list again rather than wait for numbers that mean nothing here."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CATCH_UP_SECONDS
    while (newest := await store.resource_version()) < requested:
        if loop.time() >= deadline:
            message = f"resource version {requested} is newer than the newest of this store ({newest}): list again"
            return status_response(410, "Expired", message, {})
        await asyncio.sleep(0.1)
    return None


async def end_watches(app: web.Application) -> None:
    """On shutdown: end every running watch at once (a watch would otherwise hold the shutdown for its
    whole timeout); their clients resume from the last resource version they saw."""
    watches = app[WATCHES]
    for task in list(watches):
        task.cancel()


async def follow(
    request: web.Request, chosen: Selection, start: WatchStart, stream: WatchStream, bookmarks: bool, deadline: float
) -> None:
    """Send the watch's events until its deadline or until the client goes; a watch that cannot go on
    ends with an ERROR event (410 Expired: list again), as the apiserver's watch does."""
    store, feed = request.app[STORE_KEY], request.app[FEED]
    loop = asyncio.get_running_loop()
    after = start.after
    if start.initial:
        after = await send_initial(store, chosen, stream)
        if start.initial_end_bookmark:
            await stream.bookmark(after, initial_end=True)
    elif after is None:
        await feed.started.wait()
        after = feed.position
    if not chosen.possible:
        filter_ = None
    else:
        filter_ = WatchFilter(chosen.namespace, chosen.terms)
    interval = request.app[BOOKMARK_SECONDS]
    next_bookmark = loop.time() + interval
    try:
        async with Follower(feed, after) as follower:
            while (left := deadline - loop.time()) > 0 and not _gone(request):
                entry = await follower.next(min(left, max(next_bookmark - loop.time(), 0.01), _GONE_CHECK_SECONDS))
                if entry is not None and filter_ is not None:
                    event = filter_.event(entry)
                    if event is not None:
                        await stream.send(event.type, with_resource_version(event.body, event.resource_version))
                if bookmarks and loop.time() >= next_bookmark:
                    caught_up = follower.caught_up
                    if caught_up is not None:
                        await stream.bookmark(caught_up)
                        next_bookmark = loop.time() + interval
    except WatchEnded as exc:
        if exc.expired:  # the feed lost the log: the client must list again
            await stream.error(expired_body(str(exc)))


#: How often an idle watch looks whether its client is still there.
_GONE_CHECK_SECONDS = 5.0


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def send_initial(store: Store, chosen: Selection, stream: WatchStream) -> int:
    """Send every matching object as ADDED, read at one resource version; returns that version."""
    version: int | None = None
    after = None
    while True:
        if not chosen.possible:
            return await store.resource_version()
        page = await store.list_guestinfos(ListQuery(chosen.namespace, chosen.terms, _INITIAL_PAGE, after, version))
        version = page.resource_version
        for item in page.items:
            await stream.send("ADDED", object_bytes(item))
        if not page.more:
            return version
        after = (page.items[-1].namespace, page.items[-1].name)


def add_routes(app: web.Application) -> None:
    """The routes of the group (discovery of `/apis` is served with the other groups' by `sinks.api`)."""
    app[WATCHES] = set()
    app.on_shutdown.append(end_watches)
    prefix = f"/apis/{GROUP}/{VERSION}"
    app.router.add_get(prefix, get_resource_list, name="discovery:guestinfo")
    app.router.add_get(f"{prefix}/{RESOURCE}", list_or_watch, name="guestinfos:cluster")
    app.router.add_get(f"{prefix}/namespaces/{{namespace}}/{RESOURCE}", list_or_watch, name="guestinfos:namespace")
    app.router.add_get(f"{prefix}/namespaces/{{namespace}}/{RESOURCE}/{{name}}", get_guestinfo, name="guestinfo")
    subs = "|".join(SUBRESOURCES)
    app.router.add_get(
        f"{prefix}/namespaces/{{namespace}}/{RESOURCE}/{{name}}/{{sub:{subs}}}",
        subresource_handler(not_found),
        name="guestinfo-subresource",
    )


async def get_resource_list(request: web.Request) -> web.Response:
    return web.Response(body=api_resource_list(), content_type=JSON)
