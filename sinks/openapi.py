"""The OpenAPI documents of this aggregated API server, for the Kubernetes aggregator.

kube-apiserver fetches `/openapi/v2`, `/openapi/v3` and each `/openapi/v3/apis/<group>/<version>` the
v3 index names from the server behind every APIService and merges them into its own: that is what
`kubectl explain`, client-side validation and generated clients know of `guestinfo.kubevirt.io/v1alpha1`
and of the guest-agent subresources of `subresources.kubevirt.io` served here.

Both versions are built from one description of the schemas (`_definitions`), written once with a
`_Flavor` that renders references as `#/definitions/...` (Swagger 2.0) or `#/components/schemas/...`
(OpenAPI 3.0). Each document holds exactly the definitions its paths reach, and is encoded once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any

import orjson

from sinks.guestinfos import API_VERSION, GROUP, KIND, LIST_KIND, RESOURCE, SUBRESOURCES, VERSION

Schema = dict[str, Any]

KUBEVIRT_GROUP = "subresources.kubevirt.io"
KUBEVIRT_VERSIONS = ("v1", "v1alpha3")
#: The group-versions with an OpenAPI v3 document, in the index's order.
GROUP_VERSIONS = (API_VERSION, *(f"{KUBEVIRT_GROUP}/{version}" for version in KUBEVIRT_VERSIONS))
INFO = {"title": "guestinfo", "version": "v1alpha1"}
JSON = "application/json"
WATCH_JSON = "application/json;stream=watch"

META = "io.k8s.apimachinery.pkg.apis.meta.v1."
OBJECT_META, LIST_META, TIME = f"{META}ObjectMeta", f"{META}ListMeta", f"{META}Time"
STATUS, STATUS_DETAILS, STATUS_CAUSE = f"{META}Status", f"{META}StatusDetails", f"{META}StatusCause"
WATCH_EVENT, RAW_EXTENSION = f"{META}WatchEvent", "io.k8s.apimachinery.pkg.runtime.RawExtension"
RESOURCE_LIST, API_RESOURCE = f"{META}APIResourceList", f"{META}APIResource"
GUESTINFO = f"io.kubevirt.guestinfo.{VERSION}.{KIND}"
GUESTINFO_LIST = f"io.kubevirt.guestinfo.{VERSION}.{LIST_KIND}"
GUESTINFO_STATUS = f"io.kubevirt.guestinfo.{VERSION}.{KIND}Status"
AGENT_INFO, OS_INFO = "v1.VirtualMachineInstanceGuestAgentInfo", "v1.VirtualMachineInstanceGuestOSInfo"
USER_LIST, USER = "v1.VirtualMachineInstanceGuestOSUserList", "v1.VirtualMachineInstanceGuestOSUser"
FS_LIST, FS = "v1.VirtualMachineInstanceFileSystemList", "v1.VirtualMachineInstanceFileSystem"
FS_DISK, FS_INFO = "v1.VirtualMachineInstanceFileSystemDisk", "v1.VirtualMachineInstanceFileSystemInfo"
COMMAND, INTERFACE = "v1.GuestAgentCommandInfo", "v1.VirtualMachineInstanceNetworkInterface"
CONDITION = "v1.VirtualMachineInstanceCondition"
#: The body definition of each subresource.
BODIES = {"guestosinfo": AGENT_INFO, "userlist": USER_LIST, "filesystemlist": FS_LIST}


@dataclass(frozen=True, slots=True)
class _Flavor:
    """How the one description is rendered: Swagger 2.0 (`v3` False) or OpenAPI 3.0."""

    v3: bool

    @property
    def prefix(self) -> str:
        return "#/components/schemas/" if self.v3 else "#/definitions/"

    def ref(self, name: str, description: str = "") -> Schema:
        """A reference to definition `name`; with a description, as Kubernetes writes one (v3 ignores
        the siblings of a `$ref`, hence `allOf`)."""
        target: Schema = {"$ref": self.prefix + name}
        if not description:
            return target
        return {"allOf": [target], "description": description} if self.v3 else {**target, "description": description}

    def nullable(self, schema: Schema) -> Schema:
        return {**schema, "nullable": True} if self.v3 else schema


def _string(description: str, fmt: str = "") -> Schema:
    return {"type": "string", "description": description} | ({"format": fmt} if fmt else {})


def _integer(description: str, fmt: str = "int64") -> Schema:
    return {"type": "integer", "format": fmt, "description": description}


def _boolean(description: str) -> Schema:
    return {"type": "boolean", "description": description}


def _array(description: str, items: Schema) -> Schema:
    return {"type": "array", "items": items, "description": description}


def _map(description: str, values: Schema) -> Schema:
    return {"type": "object", "additionalProperties": values, "description": description}


def _object(description: str, properties: Schema, required: tuple[str, ...] = (), kind: str = "") -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = list(required)
    if kind:
        schema["x-kubernetes-group-version-kind"] = [{"group": GROUP, "version": VERSION, "kind": kind}]
    return schema


def _type_meta() -> Schema:
    return {
        "kind": _string("Kind of this object (a CamelCase name)."),
        "apiVersion": _string("Versioned schema of this representation of the object."),
    }


def _definitions(f: _Flavor) -> dict[str, Schema]:
    """Every definition either document may use, by the name Kubernetes or KubeVirt gives it."""
    ref = f.ref
    return {
        OBJECT_META: _object("Metadata of a persisted resource.", {
            "name": _string("Name of the object, unique in its namespace (here the VMI's name)."),
            "namespace": _string("Namespace of the object (here the VMI's namespace)."),
            "uid": _string("Unique identifier of the object (here the VMI's uid)."),
            "resourceVersion": _string("Opaque version of the object, changed on every write."),
            "creationTimestamp": ref(TIME, "When the object was first stored."),
            "labels": _map("Labels of the object.", {"type": "string"}),
            "annotations": _map("Annotations of the object.", {"type": "string"}),
        }),
        LIST_META: _object("Metadata of a list.", {
            "resourceVersion": _string("Version of the store the list was read at."),
            "continue": _string("Token to fetch the next page of a limited list; empty on the last page."),
            "remainingItemCount": _integer("Number of items after this page, when known."),
        }),
        TIME: _string("A point in time, RFC 3339 in UTC with whole seconds.", "date-time"),
        STATUS: _object("The body of every error answer.", {
            **_type_meta(),
            "metadata": ref(LIST_META, "Standard list metadata."),
            "status": _string('"Success" or "Failure".'),
            "message": _string("Human-readable description of the error."),
            "reason": _string("Machine-readable reason of the error, e.g. NotFound."),
            "details": ref(STATUS_DETAILS, "What the error is about."),
            "code": _integer("HTTP status code of the answer.", "int32"),
        }),
        STATUS_DETAILS: _object("The object an error is about.", {
            "name": _string("Name of the object."),
            "group": _string("API group of the object."),
            "kind": _string("Kind of the object."),
            "causes": _array("Individual causes of the error.", ref(STATUS_CAUSE)),
        }),
        STATUS_CAUSE: _object("One cause of an error.", {
            "reason": _string("Machine-readable reason of this cause."),
            "message": _string("Human-readable description of this cause."),
            "field": _string("The field of the request this cause is about."),
        }),
        WATCH_EVENT: _object("One event of a watch stream (`watch=true`).", {
            "type": _string("ADDED, MODIFIED, DELETED, BOOKMARK or ERROR."),
            "object": ref(RAW_EXTENSION, "The object: its new state, its last state (DELETED), a Status (ERROR) "
                                         "or an object with only metadata.resourceVersion (BOOKMARK)."),
        }, ("type", "object")),
        RAW_EXTENSION: {"type": "object", "description": "An embedded object of any kind."},
        RESOURCE_LIST: _object("The resources of a group-version.", {
            **_type_meta(),
            "groupVersion": _string("The group-version the resources belong to."),
            "resources": _array("The resources and subresources.", ref(API_RESOURCE)),
        }, ("groupVersion", "resources")),
        API_RESOURCE: _object("One resource or subresource of a group-version.", {
            "name": _string("Plural name of the resource, or resource/subresource."),
            "singularName": _string("Singular name of the resource."),
            "namespaced": _boolean("Whether the resource is namespaced."),
            "kind": _string("Kind of the resource's objects."),
            "verbs": _array("The verbs the resource supports.", {"type": "string"}),
            "shortNames": _array("Short names of the resource.", {"type": "string"}),
            "categories": _array("Categories the resource belongs to.", {"type": "string"}),
        }, ("name", "singularName", "namespaced", "kind", "verbs")),
        GUESTINFO: _object("What the guest agent and the domain say of one VMI.", {
            **_type_meta(),
            "metadata": ref(OBJECT_META, "Name, namespace and uid of the VMI; the object's version."),
            "status": ref(GUESTINFO_STATUS, "The guest's information."),
        }, kind=KIND),
        GUESTINFO_LIST: _object("A list of GuestInfos.", {
            **_type_meta(),
            "metadata": ref(LIST_META, "Standard list metadata."),
            "items": _array("The GuestInfos.", ref(GUESTINFO)),
        }, ("items",), kind=LIST_KIND),
        GUESTINFO_STATUS: _object("The guest's information, merged from the guest agent and the domain.", {
            "nodeName": _string("Node the VMI runs on."),
            "agentConnected": _boolean("Whether the guest agent is connected."),
            "guestOSInfo": ref(OS_INFO, "The guest's operating system."),
            "hostname": _string("The guest's hostname."),
            "timezone": _string("The guest's timezone and its offset from UTC in seconds."),
            "agentVersion": _string("Version of the guest agent."),
            "interfaces": _array("The VMI's network interfaces.", ref(INTERFACE)),
            "conditions": _array("Conditions of the VMI about its guest agent.", ref(CONDITION)),
            "userCount": _integer("Number of users logged in to the guest.", "int32"),
            "filesystemCount": _integer("Number of filesystems the guest agent reports.", "int32"),
            "revision": _integer("Revision of the merged record, raised on every change."),
            "observed": _map("When each part (domain, os, users, ...) was last observed.",
                             {"type": "string", "format": "date-time"}),
        }, ("nodeName", "agentConnected", "userCount", "filesystemCount", "revision")),
        AGENT_INFO: _object("The body of the guestosinfo subresource.", {
            **_type_meta(),
            "guestAgentVersion": _string("Version of the guest agent."),
            "supportedCommands": _array("Commands of the guest agent.", ref(COMMAND)),
            "hostname": _string("The guest's hostname."),
            "os": ref(OS_INFO, "The guest's operating system."),
            "timezone": _string("The guest's timezone and its offset from UTC in seconds."),
            "userList": _array("Users logged in to the guest.", ref(USER)),
            "fsInfo": ref(FS_INFO, "The guest's filesystems."),
            "fsFreezeStatus": _string("Freeze state of the guest's filesystems."),
        }),
        OS_INFO: _object("The guest's operating system, from its os-release and uname.", {
            "name": _string("Name of the operating system (NAME)."),
            "kernelRelease": _string("Kernel release (uname -r)."),
            "version": _string("Version of the operating system (VERSION)."),
            "prettyName": _string("Full name of the operating system (PRETTY_NAME)."),
            "versionId": _string("Version identifier of the operating system (VERSION_ID)."),
            "kernelVersion": _string("Kernel version (uname -v)."),
            "machine": _string("Machine architecture (uname -m)."),
            "id": _string("Identifier of the operating system (ID)."),
        }),
        COMMAND: _object("One command of the guest agent.", {
            "name": _string("Name of the command."),
            "enabled": _boolean("Whether the command is enabled."),
        }, ("name",)),
        USER_LIST: _object("The body of the userlist subresource.", {
            **_type_meta(),
            "metadata": ref(LIST_META, "Standard list metadata (empty)."),
            "items": _array("The users.", ref(USER)),
        }, ("items",)),
        USER: _object("A user logged in to the guest.", {
            "userName": _string("Name of the user."),
            "domain": _string("Domain of the user."),
            "loginTime": {"type": "number", "format": "double", "description": "Login time, seconds since the epoch."},
        }, ("userName",)),
        FS_LIST: _object("The body of the filesystemlist subresource.", {
            **_type_meta(),
            "metadata": ref(LIST_META, "Standard list metadata (empty)."),
            "items": _array("The filesystems.", ref(FS)),
        }, ("items",)),
        FS_INFO: _object("The guest's filesystems.", {
            "disks": f.nullable(_array("The filesystems (null when there are none).", ref(FS))),
        }),
        FS: _object("A filesystem of the guest.", {
            "diskName": _string("Name of the disk device."),
            "mountPoint": _string("Where the filesystem is mounted."),
            "fileSystemType": _string("Type of the filesystem."),
            "usedBytes": _integer("Bytes in use."),
            "totalBytes": _integer("Size of the filesystem in bytes."),
            "disk": _array("The disks the filesystem is on.", ref(FS_DISK)),
        }),
        FS_DISK: _object("A disk a filesystem is on.", {
            "serial": _string("Serial number of the disk."),
            "busType": _string("Bus of the disk."),
        }),
        INTERFACE: _object("A network interface of the VMI.", {
            "ipAddress": _string("The interface's first IP address."),
            "mac": _string("The interface's MAC address."),
            "name": _string("Name of the interface in the VMI's spec."),
            "ipAddresses": _array("All the interface's IP addresses.", {"type": "string"}),
            "podInterfaceName": _string("Name of the pod's interface it is bound to."),
            "interfaceName": _string("Name of the interface in the guest."),
            "infoSource": _string('Where the information comes from, e.g. "domain, guest-agent".'),
            "queueCount": _integer("Number of queues of the interface.", "int32"),
            "linkState": _string('Link state of the interface: "up" or "down".'),
        }),
        CONDITION: _object("A condition of the VMI.", {
            "type": _string("Type of the condition, e.g. AgentConnected."),
            "status": _string('"True", "False" or "Unknown".'),
            "lastProbeTime": f.nullable(_string("When the condition was last probed.", "date-time")),
            "lastTransitionTime": f.nullable(_string("When the condition last changed.", "date-time")),
            "reason": _string("Machine-readable reason of the condition."),
            "message": _string("Human-readable description of the condition."),
        }, ("type", "status")),
    }


def _camel(group_version: str) -> str:
    """`guestinfo.kubevirt.io/v1alpha1` -> `GuestinfoKubevirtIoV1alpha1`, as in Kubernetes' operation ids."""
    group, version = group_version.split("/")
    return "".join(part.capitalize() for part in group.split(".")) + version.capitalize()


def _tag(group_version: str) -> str:
    group, version = group_version.split("/")
    camel = "".join(part.capitalize() for part in group.split("."))
    return f"{camel[0].lower()}{camel[1:]}_{version}"


def _param(f: _Flavor, name: str, where: str, kind: str, description: str) -> Schema:
    param: Schema = {"name": name, "in": where, "description": description}
    if where == "path":
        param["required"] = True
    return param | ({"schema": {"type": kind}} if f.v3 else {"type": kind})


_LIST_PARAMS = (
    ("allowWatchBookmarks", "boolean", "Whether a watch may be sent BOOKMARK events."),
    ("continue", "string", "The token of the previous page, to read the next page of a list."),
    ("fieldSelector", "string", "Only objects whose fields match (metadata.name, status.nodeName, ...)."),
    ("labelSelector", "string", "Only objects whose labels match."),
    ("limit", "integer", "Most objects in one page of a list."),
    ("resourceVersion", "string", "The version a list is read at or a watch starts after."),
    ("resourceVersionMatch", "string", "How resourceVersion applies to a list: Exact or NotOlderThan."),
    ("sendInitialEvents", "boolean", "Whether a watch starts with an ADDED event of every object."),
    ("timeoutSeconds", "integer", "Seconds after which a list or watch ends."),
    ("watch", "boolean", "Watch for changes instead of listing: a stream of WatchEvents."),
)


def _operation(f: _Flavor, group_version: str, op_id: str, description: str, body: str,
               action: str = "", kind: str = "", watch: bool = False) -> Schema:
    """A GET of `group_version` answering `body` (or WatchEvents with `watch`); every error is a Status."""
    op: Schema = {"description": description, "tags": [_tag(group_version)], "operationId": op_id}
    if f.v3:
        content = {JSON: {"schema": f.ref(body)}} | ({WATCH_JSON: {"schema": f.ref(WATCH_EVENT)}} if watch else {})
        ok: Schema = {"description": "OK", "content": content}
        error: Schema = {"description": "Error", "content": {JSON: {"schema": f.ref(STATUS)}}}
    else:
        op |= {"consumes": ["*/*"], "produces": [JSON, WATCH_JSON] if watch else [JSON], "schemes": ["https"]}
        ok, error = {"description": "OK", "schema": f.ref(body)}, {"description": "Error", "schema": f.ref(STATUS)}
    op["responses"] = {"200": ok, "401": {"description": "Unauthorized"}, "default": error}
    if action:
        group, version = group_version.split("/")
        op["x-kubernetes-action"] = action
        op["x-kubernetes-group-version-kind"] = {"group": group, "version": version, "kind": kind}
    return op


def _paths(f: _Flavor) -> dict[str, Schema]:
    """Every path the server serves under /apis, by group-version."""
    gi, base = _camel(API_VERSION), f"/apis/{API_VERSION}"
    named = [_param(f, "namespace", "path", "string", "Namespace of the VMI."),
             _param(f, "name", "path", "string", "Name of the VMI.")]
    listing = [_param(f, name, "query", kind, text) for name, kind, text in _LIST_PARAMS]
    listed = f"list or watch objects of kind {KIND}"
    paths: dict[str, Schema] = {
        f"{base}/": {"get": _operation(f, API_VERSION, f"get{gi}APIResources", "get available resources",
                                       RESOURCE_LIST)},
        f"{base}/{RESOURCE}": {
            "get": _operation(f, API_VERSION, f"list{gi}{KIND}ForAllNamespaces", listed, GUESTINFO_LIST, "list", KIND,
                              watch=True),
            "parameters": listing,
        },
        f"{base}/namespaces/{{namespace}}/{RESOURCE}": {
            "get": _operation(f, API_VERSION, f"list{gi}Namespaced{KIND}", listed, GUESTINFO_LIST, "list", KIND,
                              watch=True),
            "parameters": named[:1] + listing,
        },
        f"{base}/namespaces/{{namespace}}/{RESOURCE}/{{name}}": {
            "get": _operation(f, API_VERSION, f"read{gi}Namespaced{KIND}", f"read the specified {KIND}",
                              GUESTINFO, "get", KIND),
            "parameters": named,
        },
    }
    for sub in SUBRESOURCES:
        paths[f"{base}/namespaces/{{namespace}}/{RESOURCE}/{{name}}/{sub}"] = {
            "get": _operation(f, API_VERSION, f"read{gi}Namespaced{KIND}{sub.capitalize()}",
                              f"read {sub} of the specified {KIND}", BODIES[sub], "get", KIND),
            "parameters": named,
        }
    for version in KUBEVIRT_VERSIONS:
        group_version = f"{KUBEVIRT_GROUP}/{version}"
        for sub in SUBRESOURCES:
            kind = BODIES[sub].removeprefix("v1.")
            path = f"/apis/{group_version}/namespaces/{{namespace}}/virtualmachineinstances/{{name}}/{sub}"
            paths[path] = {
                "get": _operation(f, group_version, f"read{_camel(group_version)}NamespacedVirtualMachineInstance"
                                  f"{sub.capitalize()}", f"read {sub} of the specified VirtualMachineInstance",
                                  BODIES[sub], "get", kind),
                "parameters": named,
            }
    return paths


def _refs(node: Any) -> Iterator[str]:
    """Every `$ref` in a JSON value."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _document(v3: bool, group_version: str | None) -> bytes:
    """The document of one group-version (all of them: None) with exactly the definitions its paths reach."""
    f = _Flavor(v3)
    paths = {path: item for path, item in _paths(f).items()
             if group_version is None or path.startswith(f"/apis/{group_version}/")}
    definitions = _definitions(f)
    reached: set[str] = set()
    pending = list(_refs(paths))
    while pending:
        name = pending.pop().removeprefix(f.prefix)
        if name not in reached:
            reached.add(name)
            pending += _refs(definitions[name])
    schemas = {name: schema for name, schema in definitions.items() if name in reached}
    if v3:
        return orjson.dumps({"openapi": "3.0.0", "info": INFO, "paths": paths, "components": {"schemas": schemas}})
    return orjson.dumps({"swagger": "2.0", "info": INFO, "paths": paths, "definitions": schemas})


def content_hash(body: bytes) -> str:
    """The hash Kubernetes puts in a v3 `serverRelativeURL`: uppercase hex SHA-512 of the document."""
    return hashlib.sha512(body).hexdigest().upper()


@cache
def openapi_v2() -> bytes:
    """`/openapi/v2`: the Swagger 2.0 document of every path served."""
    return _document(False, None)


@cache
def _v3_documents() -> Mapping[str, bytes]:
    return MappingProxyType({group_version: _document(True, group_version) for group_version in GROUP_VERSIONS})


def openapi_v3(group_version: str) -> bytes | None:
    """`/openapi/v3/apis/<group>/<version>`: the OpenAPI 3.0 document of one group-version; None if not served."""
    return _v3_documents().get(group_version)


@cache
def openapi_v3_index() -> bytes:
    """`/openapi/v3`: where each group-version's document is, with its content hash (clients cache by it)."""
    return orjson.dumps({"paths": {
        f"apis/{group_version}": {"serverRelativeURL": f"/openapi/v3/apis/{group_version}?hash={content_hash(body)}"}
        for group_version, body in _v3_documents().items()
    }})
