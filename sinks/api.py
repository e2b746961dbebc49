"""The REST API: the aiohttp application, discovery, OpenAPI, health and metrics.

Two API groups are served from the store: KubeVirt's `subresources.kubevirt.io` guest-agent
subresources (`sinks/kubevirt_subresources.py`) and guestinfo's own `guestinfo.kubevirt.io`
(`sinks/guestinfo_api.py`). Errors are always a metav1.Status JSON, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from sinks import guestinfo_api, guestinfos
from sinks.guestinfo_api import BOOKMARK_SECONDS, FEED, api_group
from sinks.kube_status import JSON, Handler, Middleware, status_response
from sinks.kubevirt_subresources import (
    CACHE_KEY,
    GROUP,
    STORE_KEY,
    SUBRESOURCES,
    VERSIONS,
    BodyCache,
    resource_list,
    subresource_handler,
    vmi_not_found,
)
from sinks.metrics import API_LATENCY, API_REQUESTS, REGISTRY
from sinks.openapi import openapi_v2, openapi_v3, openapi_v3_index
from sinks.store import Store
from sinks.watch import ChangeFeed

log = logging.getLogger(__name__)

#: The groups served, each with its versions (the preferred one first).
GROUPS = ((guestinfos.GROUP, (guestinfos.VERSION,)), (GROUP, VERSIONS))

#: What `/healthz` answers: healthy or not, and the text to say.
Health = Callable[[], tuple[bool, str]]
HEALTH: web.AppKey[Health] = web.AppKey("guestinfo-health")


def _always_healthy() -> tuple[bool, str]:
    return True, "ok"


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=JSON)


async def get_api_groups(request: web.Request) -> web.Response:
    """GET /apis: the APIGroupList (the legacy form; the aggregator and kubectl fall back to it)."""
    groups = [api_group(group, versions) for group, versions in GROUPS]
    return _json(orjson.dumps({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))


async def get_api_group(request: web.Request) -> web.Response:
    """GET /apis/{group}: the APIGroup."""
    group = request.match_info["group"]
    versions = dict(GROUPS)[group]
    return _json(orjson.dumps({"kind": "APIGroup", "apiVersion": "v1", **api_group(group, versions)}))


async def get_resource_list(request: web.Request) -> web.Response:
    return _json(resource_list(request.match_info["version"]))


async def get_openapi_v2(request: web.Request) -> web.Response:
    return _json(openapi_v2())


async def get_openapi_v3_index(request: web.Request) -> web.Response:
    return _json(openapi_v3_index())


async def get_openapi_v3(request: web.Request) -> web.Response:
    document = openapi_v3(f"{request.match_info['group']}/{request.match_info['version']}")
    if document is None:
        raise web.HTTPNotFound()
    return _json(document)


async def get_healthz(request: web.Request) -> web.Response:
    """The store sink's health (`sinks.consuming.FetchWatch`): 503 while Kafka does not answer it."""
    healthy, text = request.app[HEALTH]()
    return web.Response(status=200 if healthy else 503, text=text, content_type="text/plain")


async def get_livez(request: web.Request) -> web.Response:
    """Alive and serving: the store's data is served while Kafka is away, so neither /livez nor /readyz
    follows the sink (a restart would not bring Kafka back, and taking the API out of its Service would
    fail every read instead of answering the last state known)."""
    return web.Response(text="ok", content_type="text/plain")


async def get_metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def _endpoint(request: web.Request) -> str:
    route = request.match_info.route
    if route is None or not route.name:
        return "unmatched"
    if route.name in ("subresource", "guestinfo-subresource"):
        return request.match_info.get("sub", "subresource")
    return route.name.partition(":")[0]


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


def make_app(
    store: Store, guard: Middleware | None = None, feed: ChangeFeed | None = None, bookmark_seconds: float = 60.0,
    health: Health | None = None,
) -> web.Application:
    """The aiohttp application over `store`; `guard` (a middleware) passes every request before its handler.

    Watches follow `feed` (one per process); without one, the application runs its own while it runs.
    `/healthz` answers `health` (always healthy without one); `/livez` and `/readyz` answer 200.
    """
    app = web.Application(middlewares=[observe] if guard is None else [observe, guard])
    app[STORE_KEY] = store
    app[CACHE_KEY] = BodyCache()
    app[BOOKMARK_SECONDS] = bookmark_seconds
    if feed is None:
        feed = ChangeFeed(store)
        app.cleanup_ctx.append(_following(feed))
    app[FEED] = feed
    app[HEALTH] = health or _always_healthy
    versions = "|".join(VERSIONS)
    subs = "|".join(SUBRESOURCES)
    prefix = f"/apis/{GROUP}/{{version:{versions}}}"
    app.router.add_get(
        f"{prefix}/namespaces/{{namespace}}/virtualmachineinstances/{{name}}/{{sub:{subs}}}",
        subresource_handler(vmi_not_found),
        name="subresource",
    )
    app.router.add_get(prefix, get_resource_list, name="discovery:subresources")
    guestinfo_api.add_routes(app)
    groups = "|".join(group.replace(".", r"\.") for group, _ in GROUPS)
    app.router.add_get("/apis", get_api_groups, name="discovery:apis")
    app.router.add_get(f"/apis/{{group:{groups}}}", get_api_group, name="discovery:group")
    app.router.add_get("/openapi/v2", get_openapi_v2, name="openapi:v2")
    app.router.add_get("/openapi/v3", get_openapi_v3_index, name="openapi:v3")
    app.router.add_get("/openapi/v3/apis/{group}/{version}", get_openapi_v3, name="openapi:group")
    app.router.add_get("/healthz", get_healthz, name="healthz:healthz")
    app.router.add_get("/readyz", get_livez, name="healthz:readyz")
    app.router.add_get("/livez", get_livez, name="healthz:livez")
    app.router.add_get("/metrics", get_metrics, name="metrics")
    return app


def _following(feed: ChangeFeed):  # type: ignore[no-untyped-def]
    async def follow(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(feed.run(), name="guestinfo-watch-feed")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return follow
