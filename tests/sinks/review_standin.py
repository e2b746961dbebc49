"""A stand-in kube-apiserver for the API's reviews: TokenReview, SubjectAccessReview and the
`kube-system/extension-apiserver-authentication` ConfigMap, over real HTTP.

It is strict where the real server is: the caller must send its own bearer token (the reviewer's
account), a review must be a JSON object of the right apiVersion and kind with a `spec`, and a
SubjectAccessReview must name a user and exactly one of resourceAttributes / nonResourceAttributes;
anything else is a 400 (401 without the token). Access follows `rules`, as RBAC would: a rule names
a user or a group and the attributes it allows (`*` matches anything; a namespace of `*` is every
namespace, as a ClusterRoleBinding). Every review received is kept, for the tests to count and read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web

REVIEWER_TOKEN = "reviewer-secret-token"


@dataclass(frozen=True)
class Rule:
    subject: str  #: "user:NAME" or "group:NAME"
    verb: str = "get"
    group: str = "*"
    resource: str = "*"
    subresource: str = "*"
    namespace: str = "*"
    path: str = ""  #: a non-resource rule when set

    def allows(self, user: str, groups: list[str], attributes: dict[str, Any], resource: bool) -> bool:
        kind, _, name = self.subject.partition(":")
        if not ((kind == "user" and name == user) or (kind == "group" and name in groups)):
            return False
        if self.verb not in ("*", attributes.get("verb")):
            return False
        if not resource:
            return bool(self.path) and self.path == attributes.get("path")
        if self.path:
            return False
        return all(
            want in ("*", attributes.get(key, ""))
            for key, want in (("group", self.group), ("resource", self.resource),
                              ("subresource", self.subresource), ("namespace", self.namespace))
        )


@dataclass
class ReviewStandIn:
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)  #: bearer token → TokenReview user
    rules: list[Rule] = field(default_factory=list)
    configmap: dict[str, str] | None = None
    failing: bool = False  #: answer every review with 503, as an apiserver in trouble
    token_reviews: list[dict[str, Any]] = field(default_factory=list)
    access_reviews: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def kubeconfig(self, folder: Path) -> Path:
        """A kubeconfig for the reviewer's account on this stand-in."""
        path = folder / "reviewer.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "reviewer",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "reviewer", "user": {"token": REVIEWER_TOKEN}}],
            "contexts": [{"name": "reviewer", "context": {"cluster": "standin", "user": "reviewer"}}],
        }))
        return path

    async def _body(self, request: web.Request, api_version: str, kind: str) -> dict[str, Any]:
        if request.headers.get("Authorization") != f"Bearer {REVIEWER_TOKEN}":
            raise web.HTTPUnauthorized(text="the reviewer's token is missing")
        if self.failing:
            raise web.HTTPServiceUnavailable(text="the stand-in is failing on purpose")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise web.HTTPBadRequest(text="not JSON") from None
        if not isinstance(body, dict) or (body.get("apiVersion"), body.get("kind")) != (api_version, kind):
            raise web.HTTPBadRequest(text=f"expected a {api_version} {kind}")
        if not isinstance(body.get("spec"), dict):
            raise web.HTTPBadRequest(text="no spec")
        return body

    async def token_review(self, request: web.Request) -> web.Response:
        body = await self._body(request, "authentication.k8s.io/v1", "TokenReview")
        self.token_reviews.append(body)
        user = self.tokens.get(body["spec"].get("token", ""))
        status: dict[str, Any] = {"authenticated": True, "user": user} if user else {"authenticated": False}
        return web.json_response({**body, "status": status})

    async def access_review(self, request: web.Request) -> web.Response:
        body = await self._body(request, "authorization.k8s.io/v1", "SubjectAccessReview")
        spec = body["spec"]
        kinds = [key for key in ("resourceAttributes", "nonResourceAttributes") if key in spec]
        if not spec.get("user") or len(kinds) != 1:
            raise web.HTTPBadRequest(text="a review names a user and exactly one kind of attributes")
        self.access_reviews.append(body)
        resource = kinds[0] == "resourceAttributes"
        allowed = any(
            rule.allows(spec["user"], spec.get("groups", []), spec[kinds[0]], resource) for rule in self.rules
        )
        return web.json_response({**body, "status": {"allowed": allowed}})

    async def get_configmap(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {REVIEWER_TOKEN}":
            raise web.HTTPUnauthorized()
        if self.configmap is None:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "reason": "NotFound", "code": 404}, status=404)
        return web.json_response({"apiVersion": "v1", "kind": "ConfigMap", "data": self.configmap,
                                  "metadata": {"namespace": "kube-system",
                                               "name": "extension-apiserver-authentication"}})


async def serve_standin(standin: ReviewStandIn) -> AsyncIterator[ReviewStandIn]:
    app = web.Application()
    app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", standin.token_review)
    app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", standin.access_review)
    app.router.add_get(
        "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication", standin.get_configmap
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    standin.url = f"http://127.0.0.1:{port}"
    try:
        yield standin
    finally:
        await runner.cleanup()
        await asyncio.sleep(0)
