"""What a request asks for, and whether its caller may: SubjectAccessReview, as aggregated API servers do.

`request_attributes` reads a request the way Kubernetes' RequestInfoFactory does: under
`/apis/GROUP/VERSION/[namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]]` it is a resource request (GET of
a name is `get`, of a collection `list`, with `?watch=true` `watch`); any other path is a non-resource
URL with the lower-cased method as verb. So a read of `.../virtualmachineinstances/x/guestosinfo` is
reviewed with KubeVirt's own attributes, and the RBAC that lets a user run `virtctl guestosinfo` lets
them read it here.

Decisions are kept per (caller, attributes): allowed ones for the authorized TTL, denied ones for the
unauthorized TTL. A review that fails is a `ReviewError`, never an allow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from sinks.authn import Identity
from sinks.reviews import ReviewCache

log = logging.getLogger(__name__)

_RESOURCE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True, slots=True)
class Attributes:
    """The authorization attributes of one request (resource fields are empty for a non-resource URL)."""

    verb: str
    path: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def is_resource(self) -> bool:
        return bool(self.resource)

    def review_fields(self) -> dict[str, Any]:
        """The attributes part of a SubjectAccessReview spec (empty fields left out)."""
        if not self.is_resource:
            return {"nonResourceAttributes": {"path": self.path, "verb": self.verb}}
        fields = {
            "namespace": self.namespace, "verb": self.verb, "group": self.group, "version": self.version,
            "resource": self.resource, "subresource": self.subresource, "name": self.name,
        }
        return {"resourceAttributes": {key: value for key, value in fields.items() if value}}


#: The values Go's strconv.ParseBool reads as true (Kubernetes parses `?watch=` with it).
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


def request_attributes(method: str, raw_path: str, query: Mapping[str, str]) -> Attributes:
    """The attributes of `method raw_path?query`, as Kubernetes' RequestInfoFactory reads them.

    `raw_path` is the path as sent (percent-encoded, no query): it is split on `/` first and each
    segment decoded after, as the router matches it, so `%2F` inside a name cannot shift the parts.
    """
    path = unquote(raw_path)
    parts = [unquote(part) for part in raw_path.split("/") if part]
    if len(parts) < 4 or parts[0] != "apis":
        return Attributes(verb=method.lower(), path=path)
    group, version, rest = parts[1], parts[2], parts[3:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):  # else: the namespace object itself
            rest = rest[2:]
    resource, name, subresource = rest[0], rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
    if method in ("GET", "HEAD"):
        if name:
            verb = "get"  # a named read is `get` whatever the query says
        else:
            verb = "watch" if query.get("watch") in _TRUE else "list"
    elif method == "DELETE" and not name:
        verb = "deletecollection"
    else:
        verb = _RESOURCE_VERBS.get(method, method.lower())
    return Attributes(verb, path, group, version, resource, subresource, namespace, name)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


AccessReview = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Authorizer:
    """SubjectAccessReviews with their decisions cached for the authorized and unauthorized TTLs."""

    def __init__(self, review: AccessReview, allowed_ttl: float = 10.0, denied_ttl: float = 10.0) -> None:
        self.review = review
        self.cache: ReviewCache[tuple[Identity, Attributes], tuple[Identity, Attributes], Decision] = ReviewCache(
            self._review, lambda decision: allowed_ttl if decision.allowed else denied_ttl
        )

    async def _review(self, key: tuple[Identity, Attributes]) -> Decision:
        identity, attributes = key
        status = await self.review({**attributes.review_fields(), **identity.review_fields()})
        allowed = status.get("allowed") is True and status.get("denied") is not True
        reason = status.get("reason")
        if status.get("evaluationError"):
            log.warning("SubjectAccessReview for %s: evaluation error: %s", identity.user, status["evaluationError"])
        return Decision(allowed, reason if isinstance(reason, str) else "")

    async def authorize(self, identity: Identity, attributes: Attributes) -> Decision:
        key = (identity, attributes)
        return await self.cache.get(key, key)


def _quoted(text: str) -> str:
    """`text` in double quotes with `"` and `\\` escaped, as Go's `%q` writes printable text."""
    return json.dumps(text, ensure_ascii=False)


def forbidden_message(user: str, attributes: Attributes, reason: str) -> str:
    """The kube-apiserver's message for a denied request (k8s.io/apiserver responsewriters.Forbidden)."""
    if not attributes.is_resource:
        detail = f"User {_quoted(user)} cannot {attributes.verb} path {_quoted(attributes.path)}"
        subject = "forbidden"
    else:
        resource = attributes.resource
        if attributes.subresource:
            resource = f"{resource}/{attributes.subresource}"
        where = f"in the namespace {_quoted(attributes.namespace)}" if attributes.namespace else "at the cluster scope"
        detail = (
            f"User {_quoted(user)} cannot {attributes.verb} resource {_quoted(resource)} "
            f"in API group {_quoted(attributes.group)} {where}"
        )
        qualified = f"{attributes.resource}.{attributes.group}" if attributes.group else attributes.resource
        subject = f"{qualified} {_quoted(attributes.name)}" if attributes.name else qualified
        subject += " is forbidden"
    return f"{subject}: {detail}: {reason}" if reason else f"{subject}: {detail}"


def forbidden_details(attributes: Attributes) -> dict[str, str]:
    """The Status `details` of a denied request: only the fields that are set, as the apiserver writes them."""
    fields = {"name": attributes.name, "group": attributes.group, "kind": attributes.resource}
    return {key: value for key, value in fields.items() if value}
