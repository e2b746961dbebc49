"""The REST API: KubeVirt's guest-agent subresources served from the store, plus discovery/health/metrics.

Paths, bodies and Content-Type match virt-api (docs/upstream-behaviour.md §4): the bodies are
`schemas.codec.encode_kubevirt_body` of the stored record. Errors are always a metav1.Status JSON,
never a traceback.

Deliberate difference from upstream: virt-api answers an unknown VMI and a VMI without a connected
guest agent with HTTP 500 and a plain-text body (kubevirt/kubevirt#3296). Here an unknown VMI is a
404 `NotFound` Status and a VMI whose record says the agent is not connected is a 409 `Conflict`
Status with upstream's message, so that kubectl and client libraries can tell them apart.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from schemas.codec import encode_kubevirt_body
from schemas.vmi import VMIRecord
from sinks.kube_status import JSON, Handler, Middleware, status_response
from sinks.metrics import API_LATENCY, API_REQUESTS, REGISTRY
from sinks.store import Store, Version

log = logging.getLogger(__name__)

GROUP = "subresources.kubevirt.io"
VERSIONS = ("v1", "v1alpha3")
SUBRESOURCES = ("guestosinfo", "userlist", "filesystemlist")
_KINDS = {
    "guestosinfo": "VirtualMachineInstanceGuestAgentInfo",
    "userlist": "VirtualMachineInstanceGuestOSUserList",
    "filesystemlist": "VirtualMachineInstanceFileSystemList",
}

STORE_KEY = web.AppKey("store", Store)  # type: ignore[type-abstract]

def _vmi_details(name: str) -> dict[str, Any]:
    return {"name": name, "group": "kubevirt.io", "kind": "virtualmachineinstance"}


def vmi_not_found(name: str) -> web.Response:
    return status_response(
        404, "NotFound", f'virtualmachineinstance.kubevirt.io "{name}" not found', _vmi_details(name)
    )


def agent_not_connected(name: str) -> web.Response:
    message = (
        f'Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io "{name}": '
        "VMI does not have guest agent connected"
    )
    return status_response(409, "Conflict", message, _vmi_details(name))


def subresource_body(record: VMIRecord, subresource: str) -> bytes:
    """The exact body of one subresource for a stored record."""
    if subresource == "guestosinfo":
        return encode_kubevirt_body(record.guest_agent_info)
    if subresource == "userlist":
        return encode_kubevirt_body(record.user_list())
    return encode_kubevirt_body(record.filesystem_list())


Bodies = dict[str, bytes]


class BodyCache:
    """The bodies served last, per VMI and stored version (revision and write time), bounded LRU.

    A read then costs one cheap version query instead of reading, decoding and re-encoding the record;
    any rewrite of the row, even of the same revision, has a new version and is read afresh.
    """

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str], tuple[Version, bool, Bodies]] = OrderedDict()

    def get(self, key: tuple[str, str], version: Version, sub: str) -> tuple[bool, bytes] | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] != version or sub not in entry[2]:
            return None
        self._entries.move_to_end(key)
        return entry[1], entry[2][sub]

    def put(self, key: tuple[str, str], version: Version, record: VMIRecord, sub: str) -> tuple[bool, bytes]:
        """The body of `sub` for `record`, kept under `version` (read before the record: a newer row
        read in between is cached under the older version and read again next time, never served stale)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] != version:
            entry = (version, record.agent_connected, {})
            self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        body = entry[2].setdefault(sub, subresource_body(record, sub))
        return entry[1], body


CACHE_KEY = web.AppKey("bodies", BodyCache)


async def get_subresource(request: web.Request) -> web.Response:
    """GET .../namespaces/{namespace}/virtualmachineinstances/{name}/{guestosinfo|userlist|filesystemlist}."""
    namespace = request.match_info["namespace"]
    name = request.match_info["name"]
    sub = request.match_info["sub"]
    store, cache = request.app[STORE_KEY], request.app[CACHE_KEY]
    key = (namespace, name)
    version = await store.version(namespace, name)
    if version is None:
        return vmi_not_found(name)
    found = cache.get(key, version, sub)
    if found is None:
        record = await store.get(namespace, name)
        if record is None:
            return vmi_not_found(name)
        found = cache.put(key, version, record, sub)
    connected, body = found
    if not connected:
        return agent_not_connected(name)
    return web.Response(body=body, content_type=JSON)


def resource_list(version: str) -> bytes:
    """The APIResourceList of `subresources.kubevirt.io/<version>` (guest-agent entries only)."""
    return orjson.dumps(
        {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{GROUP}/{version}",
            "resources": [
                {
                    "name": f"virtualmachineinstances/{sub}",
                    "singularName": "",
                    "namespaced": True,
                    "kind": _KINDS[sub],
                    "verbs": ["get"],
                }
                for sub in SUBRESOURCES
            ],
        }
    )


async def get_resource_list(request: web.Request) -> web.Response:
    return web.Response(body=resource_list(request.match_info["version"]), content_type=JSON)


async def get_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok", content_type="text/plain")


async def get_metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def _endpoint(request: web.Request) -> str:
    route = request.match_info.route
    if route is None or not route.name:
        return "unmatched"
    if route.name == "subresource":
        return request.match_info.get("sub", "subresource")
    return route.name


def _error_response(exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        return status_response(404, "NotFound", "the server could not find the requested resource", {})
    if exc.status == 405:
        return status_response(405, "MethodNotAllowed", f"the server does not allow this method: {exc.reason}", {})
    return status_response(exc.status, exc.reason.replace(" ", ""), exc.reason, {})


#: The metric children of each (endpoint, status code): `labels()` takes a lock and builds a key on every call.
_OBSERVERS: dict[tuple[str, int], tuple[Counter, Histogram]] = {}


def _observers(endpoint: str, status: int) -> tuple[Counter, Histogram]:
    """The request counter and latency histogram of `endpoint` answered with `status` (a few dozen pairs)."""
    pair = _OBSERVERS.get((endpoint, status))
    if pair is None:
        pair = (API_REQUESTS.labels(endpoint, str(status)), API_LATENCY.labels(endpoint))
        _OBSERVERS[(endpoint, status)] = pair
    return pair


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request; turn every error into a Status (and never a traceback)."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = _error_response(exc)
    except Exception as exc:
        log.error("API: %s %s failed: %s: %s", request.method, request.path, type(exc).__name__, exc)
        response = status_response(500, "InternalError", "an internal error occurred; see the server log", {})
    requests, latency = _observers(_endpoint(request), response.status)
    requests.inc()
    latency.observe(time.perf_counter() - started)
    return response


def make_app(store: Store, guard: Middleware | None = None) -> web.Application:
    """The aiohttp application over `store`; `guard` (a middleware) passes every request before its handler."""
    app = web.Application(middlewares=[observe] if guard is None else [observe, guard])
    app[STORE_KEY] = store
    app[CACHE_KEY] = BodyCache()
    versions = "|".join(VERSIONS)
    subs = "|".join(SUBRESOURCES)
    prefix = f"/apis/{GROUP}/{{version:{versions}}}"
    app.router.add_get(
        f"{prefix}/namespaces/{{namespace}}/virtualmachineinstances/{{name}}/{{sub:{subs}}}",
        get_subresource,
        name="subresource",
    )
    app.router.add_get(prefix, get_resource_list, name="discovery")
    app.router.add_get("/healthz", get_healthz, name="healthz")
    app.router.add_get("/metrics", get_metrics, name="metrics")
    return app
