"""kmock's Kubernetes emulator made at least as strict as a real apiserver where it matters here.

kmock ignores Content-Type, resourceVersion and the missing /status subresource of the VMI, and
answers a failed JSON-patch `test` with 500 (docs/upstream-behaviour.md §5). This subclass enforces, on
writes, what a real kube-apiserver does (docs/upstream-behaviour.md §5):

- PATCH `.../virtualmachineinstances/NAME/status` → 404 (the VMI CRD has no status subresource);
- a PATCH Content-Type must be a patch type: missing/other → 415 UnsupportedMediaType;
- `application/json-patch+json` needs a list body, `application/merge-patch+json` an object → 400;
- strategic merge on a custom resource → 415;
- a JSON patch that fails (a `test` included) → 422 Invalid, and nothing is stored;
- a merge patch carrying a stale `metadata.resourceVersion` → 409 Conflict;
- every write sets a new `metadata.resourceVersion`.

Use with `@pytest.mark.kmock(cls=StrictKubernetesEmulator)`. `before_write` holds one-shot hooks run
(under the write lock) before a write is checked: tests use them to play a concurrent writer.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
VMI_RESOURCE = "kubevirt.io/v1/virtualmachineinstances"

Hook = Callable[["StrictKubernetesEmulator", kmock.Request], None]


def _details(request: kmock.Request) -> dict[str, Any]:
    assert request.resource is not None
    return {"name": request.name or "", "group": request.resource.group or "", "kind": request.resource.plural}


def _status_error(request: kmock.Request, status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=_details(request))


def _plain_json(response: aiohttp.web.StreamResponse) -> aiohttp.web.StreamResponse:
    """A real apiserver answers objects and errors with exactly `application/json` (no charset)."""
    if isinstance(response, aiohttp.web.Response) and response.content_type == "application/json":
        response.charset = None
    return response


def _with_data(request: kmock.Request, data: Any) -> kmock.Request:
    """Rewrite the parsed body in place: kmock matches reactions by the request's identity.

    `request.body` keeps the bytes the client sent, for assertions.
    """
    object.__setattr__(request, "data", data)
    return request


@attrs.define(kw_only=True)
class StrictKubernetesEmulator(kmock.KubernetesEmulator):
    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1000), init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    before_write: list[Hook] = attrs.field(factory=list, init=False)

    def next_resource_version(self) -> str:
        return str(next(self._versions))

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        return _plain_json(await super()._render_error(exc))

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.method not in (kmock.method.PATCH, kmock.method.POST):
            return _plain_json(await super()._handle(request))
        async with self._write_lock:
            hooks, self.before_write[:] = list(self.before_write), []
            for hook in hooks:
                hook(self, request)
            return _plain_json(await super()._handle(self._checked(request)))

    def _current(self, request: kmock.Request) -> dict[str, Any] | None:
        if request.resource is None or request.name is None:
            return None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        raw: dict[str, Any] = copy.deepcopy(self.objects[key].raw)
        return raw

    def _checked(self, request: kmock.Request) -> kmock.Request:
        if request.method == kmock.method.POST:
            data = dict(request.data or {})
            data["metadata"] = {**data.get("metadata", {}), "resourceVersion": self.next_resource_version()}
            return _with_data(request, data)
        assert request.resource is not None
        if request.subresource == "status" and request.resource.plural == "virtualmachineinstances":
            raise _status_error(request, 404, "NotFound", "the server could not find the requested resource")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type == JSON_PATCH:
            return self._json_patch(request)
        if content_type == MERGE_PATCH:
            return self._merge_patch(request)
        if content_type == STRATEGIC:
            raise _status_error(
                request, 415, "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: "
                f"{JSON_PATCH}, {MERGE_PATCH}, {APPLY}",
            )
        raise _status_error(
            request, 415, "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC}, {APPLY}",
        )

    def _json_patch(self, request: kmock.Request) -> kmock.Request:
        ops = request.data
        if not isinstance(ops, list):
            raise _status_error(
                request, 400, "BadRequest",
                "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
            )
        current = self._current(request)
        if current is None:
            return request  # the emulator answers 404
        try:
            jsonpatch.apply_patch(current, ops)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise _status_error(request, 422, "Invalid", f"the server rejected our request: {exc}") from None
        bump = {"op": "add", "path": "/metadata/resourceVersion", "value": self.next_resource_version()}
        return _with_data(request, [*ops, bump])

    def _merge_patch(self, request: kmock.Request) -> kmock.Request:
        body = request.data
        if not isinstance(body, dict):
            raise _status_error(
                request, 400, "BadRequest",
                "error decoding patch: json: cannot unmarshal array into Go value of type "
                "map[string]interface {}",
            )
        current = self._current(request)
        if current is None:
            return request
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != current.get("metadata", {}).get("resourceVersion"):
            assert request.resource is not None
            raise _status_error(
                request, 409, "Conflict",
                f'Operation cannot be fulfilled on {request.resource.plural}.{request.resource.group} '
                f'"{request.name}": the object has been modified; please apply your changes to the '
                "latest version and try again",
            )
        metadata = {**(body.get("metadata") or {}), "resourceVersion": self.next_resource_version()}
        return _with_data(request, {**body, "metadata": metadata})

    def seed_vmi(self, namespace: str, name: str, status: dict[str, Any] | None = None) -> None:
        """Store a VMI as virt-controller would have created it (with a resourceVersion)."""
        self.resources[VMI_RESOURCE] = kmock.ResourceInfo(
            kind="VirtualMachineInstance", namespaced=True, verbs={"get", "list", "patch", "update"}
        )
        obj: dict[str, Any] = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": self.next_resource_version()},
            "spec": {"domain": {"devices": {}}},
        }
        if status is not None:
            obj["status"] = status
        self.objects[VMI_RESOURCE, namespace, name] = obj

    def patches(self) -> list[kmock.Request]:
        """The PATCH requests received so far, as sent (before any strictness rewrite)."""
        return [request for request in self if request.method == kmock.method.PATCH]

    def vmi(self, namespace: str, name: str) -> dict[str, Any]:
        raw: dict[str, Any] = self.objects[VMI_RESOURCE, namespace, name].raw
        return raw
