"""KubeVirt's guest-agent subresources (`guestosinfo`, `userlist`, `filesystemlist`) served from the store.

Paths, bodies and Content-Type match virt-api (docs/upstream-behaviour.md §4): the bodies are
`schemas.codec.encode_kubevirt_body` of the stored record. The same bodies are served under
`subresources.kubevirt.io` (as virt-api) and as subresources of `guestinfos` (`sinks/guestinfo_api.py`).

Deliberate difference from upstream: virt-api answers an unknown VMI and a VMI without a connected
guest agent with HTTP 500 and a plain-text body (kubevirt/kubevirt#3296). Here an unknown VMI is a
404 `NotFound` Status and a VMI whose record says the agent is not connected is a 409 `Conflict`
Status with upstream's message, so that kubectl and client libraries can tell them apart.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from schemas.codec import encode_kubevirt_body
from schemas.vmi import VMIRecord
from sinks.kube_status import JSON, status_response
from sinks.store import Store, Version

GROUP = "subresources.kubevirt.io"
VERSIONS = ("v1", "v1alpha3")
SUBRESOURCES = ("guestosinfo", "userlist", "filesystemlist")
KINDS = {
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


NotFound = Callable[[str], web.Response]


async def subresource_response(request: web.Request, not_found: NotFound) -> web.Response:
    """The body of `{namespace}/{name}/{sub}` (from the route), or `not_found(name)` for an unknown VMI."""
    namespace = request.match_info["namespace"]
    name = request.match_info["name"]
    sub = request.match_info["sub"]
    store, cache = request.app[STORE_KEY], request.app[CACHE_KEY]
    key = (namespace, name)
    if "\x00" in namespace + name:  # no VMI has one (and PostgreSQL text cannot hold it)
        return not_found(name)
    version = await store.version(namespace, name)
    if version is None:
        return not_found(name)
    found = cache.get(key, version, sub)
    if found is None:
        record = await store.get(namespace, name)
        if record is None:
            return not_found(name)
        found = cache.put(key, version, record, sub)
    connected, body = found
    if not connected:
        return agent_not_connected(name)
    return web.Response(body=body, content_type=JSON)


def subresource_handler(not_found: NotFound) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A GET handler of the three subresources that answers an unknown VMI with `not_found`."""

    async def get_subresource(request: web.Request) -> web.Response:
        return await subresource_response(request, not_found)

    return get_subresource


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
                    "kind": KINDS[sub],
                    "verbs": ["get"],
                }
                for sub in SUBRESOURCES
            ],
        }
    )
