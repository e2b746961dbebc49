"""Kubernetes' `metav1.Status` error bodies, as the kube-apiserver writes them: every API error is one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

JSON = "application/json"

__all__ = ["JSON", "Handler", "Middleware", "status_body", "status_response"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    """A metav1.Status failure, keys in the order the apiserver writes them; `details` None leaves it out
    (as the apiserver's 401), `{}` writes it empty (as its 404 of an unknown path)."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return orjson.dumps(body)


def status_response(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> web.Response:
    return web.Response(status=code, body=status_body(code, reason, message, details), content_type=JSON)
