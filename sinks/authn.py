"""Who is calling: delegated authentication as Kubernetes' aggregated API servers do it.

Tried in this order; the first that identifies the caller wins:
1. front proxy: a client certificate signed by the requestheader CA, whose common name is allowed
   (an empty list allows any), makes the `X-Remote-User`/`X-Remote-Group`/`X-Remote-Extra-*` headers
   believed. On any other connection those headers are ignored.
2. client certificate signed by the client CA: user = common name, groups = organizations.
3. `Authorization: Bearer TOKEN`: a TokenReview, its answer (yes or no) kept for the cache TTL.
Nobody identified: None (the caller answers 401).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from multidict import CIMultiDictProxy

from sinks.reviews import ReviewCache, ReviewError
from sinks.tls import ClientCertificates

log = logging.getLogger(__name__)

REQUESTHEADER = "requestheader"
CLIENT_CA = "client-ca"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller, hashable (a cache key of authorization)."""

    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def review_fields(self) -> dict[str, Any]:
        """The user fields of a SubjectAccessReview spec (empty ones left out, as Kubernetes does)."""
        fields: dict[str, Any] = {"user": self.user}
        if self.groups:
            fields["groups"] = list(self.groups)
        if self.uid:
            fields["uid"] = self.uid
        if self.extra:
            fields["extra"] = {key: list(values) for key, values in self.extra}
        return fields


AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"


def authenticated(identity: Identity) -> Identity:
    """`identity` with `system:authenticated` added, as k8s.io/apiserver's AuthenticatedGroupAdder does
    (not to `system:anonymous`, nor when either all-users group is there already)."""
    if identity.user == "system:anonymous" or AUTHENTICATED in identity.groups or UNAUTHENTICATED in identity.groups:
        return identity
    return Identity(identity.user, (*identity.groups, AUTHENTICATED), identity.uid, identity.extra)


@dataclass(frozen=True)
class RequestHeaderRules:
    """Which front-proxy certificates are trusted and which headers carry the identity."""

    allowed_names: tuple[str, ...] = ()
    username_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = ("X-Remote-Group",)
    extra_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)

    def identity(self, headers: CIMultiDictProxy[str]) -> Identity | None:
        # As k8s.io/apiserver: the first value of the first username header that has one; every non-empty group.
        user = next((value for name in self.username_headers if (value := headers.get(name, ""))), "")
        if not user:
            return None
        groups = tuple(value for name in self.group_headers for value in headers.getall(name, []) if value)
        extra: dict[str, list[str]] = {}
        prefixes = tuple(prefix.lower() for prefix in self.extra_prefixes)
        for name, value in headers.items():
            lowered = name.lower()
            for prefix in prefixes:
                if lowered.startswith(prefix) and len(lowered) > len(prefix):
                    extra.setdefault(unquote(lowered[len(prefix):]), []).append(value)
                    break
        return Identity(user, groups, "", tuple((k, tuple(v)) for k, v in sorted(extra.items())))


TokenReview = Callable[[str], Awaitable[dict[str, Any]]]


def _identity_of_review(status: dict[str, Any]) -> Identity | None:
    if status.get("authenticated") is not True:
        return None
    user = status.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("username"), str) or not user["username"]:
        return None
    groups = user.get("groups") or []
    extra = user.get("extra") or {}
    return Identity(
        user["username"],
        tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        str(user.get("uid") or ""),
        tuple(
            (str(k), tuple(str(v) for v in values))
            for k, values in sorted(extra.items())
            if isinstance(values, list)
        )
        if isinstance(extra, dict)
        else (),
    )


class TokenCache:
    """TokenReview answers (identified or not) by token digest, each kept for `ttl` seconds."""

    def __init__(self, review: TokenReview, ttl: float = 10.0) -> None:
        self.review = review
        self.cache: ReviewCache[bytes, str, Identity | None] = ReviewCache(self._review, lambda _: ttl)

    async def _review(self, token: str) -> Identity | None:
        return _identity_of_review(await self.review(token))

    async def identify(self, token: str) -> Identity | None:
        """The token's user; a token that is not printable ASCII (as every Kubernetes token is) is nobody."""
        if not token.isascii() or not token.isprintable():
            return None
        return await self.cache.get(hashlib.sha256(token.encode()).digest(), token)


class Authenticator:
    """The three identity paths, in order. Each is off when its setting is None."""

    def __init__(
        self,
        certificates: ClientCertificates | None = None,
        request_header: RequestHeaderRules | None = None,
        tokens: TokenCache | None = None,
    ) -> None:
        self.certificates = certificates
        self.request_header = request_header
        self.tokens = tokens

    async def authenticate(self, der: bytes | None, headers: CIMultiDictProxy[str]) -> Identity | None:
        """The caller of a request with client certificate `der` (verified by the handshake) and `headers`,
        in group `system:authenticated` as Kubernetes adds it to everyone identified (RBAC's discovery
        and other default grants are bound to that group)."""
        identity = await self._identify(der, headers)
        return None if identity is None else authenticated(identity)

    async def _identify(self, der: bytes | None, headers: CIMultiDictProxy[str]) -> Identity | None:
        if der is not None and self.certificates is not None:
            certificate = self.certificates.identify(der)
            if certificate is not None:
                if certificate.issuer == REQUESTHEADER and self.request_header is not None:
                    allowed = self.request_header.allowed_names
                    if not allowed or certificate.common_name in allowed:
                        identity = self.request_header.identity(headers)
                        if identity is not None:
                            return identity
                elif certificate.issuer == CLIENT_CA and certificate.common_name:
                    return Identity(certificate.common_name, certificate.organizations)
        if self.tokens is not None:
            scheme, _, token = headers.get("Authorization", "").partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token:
                try:
                    return await self.tokens.identify(token)
                except ReviewError as exc:
                    log.warning("TokenReview failed, the caller is not identified: %s", exc)
        return None
