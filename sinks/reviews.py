"""The API's calls to the cluster's kube-apiserver: TokenReview, SubjectAccessReview, and the
`kube-system/extension-apiserver-authentication` ConfigMap (delegated authentication, as aggregated API
servers do it).

Bodies are plain dicts sent and read as JSON (no generated-model round trip); any failure (unreachable,
timeout, a non-2xx answer, a body that is not the review) is a `ReviewError`, which callers turn into a
refusal, never into an allow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import aiohttp
import orjson
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from sinks.kube_client import api_client, in_cluster

log = logging.getLogger(__name__)

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
AUTHENTICATION_CONFIGMAP = ("kube-system", "extension-apiserver-authentication")

JsonObject = dict[str, Any]
K = TypeVar("K")
S = TypeVar("S")
V = TypeVar("V")


class ReviewError(RuntimeError):
    """The kube-apiserver could not answer a review."""


class KubeReviews:
    """Posts reviews to one kube-apiserver; `timeout` bounds each call."""

    def __init__(self, api: client.ApiClient, timeout: float = 10.0) -> None:
        self.api = api
        self.timeout = timeout

    async def _call(self, method: str, path: str, body: JsonObject | None = None) -> JsonObject:
        try:
            response = await self.api.call_api(
                path, method, header_params={"Content-Type": "application/json", "Accept": "application/json"},
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=self.timeout,
            )
            data = await response.read()
            status = response.status
        except (ApiException, AttributeError) as exc:  # the client's own errors for an answer it cannot take
            raise ReviewError(f"{method} {path}: {exc}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ReviewError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if not 200 <= status < 300:
            raise ReviewError(f"{method} {path}: HTTP {status}")
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ReviewError(f"{method} {path}: the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise ReviewError(f"{method} {path}: the answer is not an object")
        return answer

    async def token_review(self, token: str) -> JsonObject:
        """The `status` of a TokenReview of `token`."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        return _status(await self._call("POST", TOKEN_REVIEWS, body), "TokenReview")

    async def access_review(self, spec: JsonObject) -> JsonObject:
        """The `status` of a SubjectAccessReview with this `spec`."""
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        return _status(await self._call("POST", ACCESS_REVIEWS, body), "SubjectAccessReview")

    async def authentication_configmap(self) -> dict[str, str] | None:
        """The data of `kube-system/extension-apiserver-authentication`, or None when it does not exist."""
        namespace, name = AUTHENTICATION_CONFIGMAP
        try:
            answer = await self._call("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        except ReviewError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise
        data = answer.get("data")
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    async def close(self) -> None:
        await self.api.close()


def _status(answer: JsonObject, kind: str) -> JsonObject:
    status = answer.get("status")
    if not isinstance(status, dict):
        raise ReviewError(f"the {kind} answer has no status")
    return status


async def open_reviews(kubeconfig: str | None, what: str) -> KubeReviews | None:
    """Reviews through `kubeconfig`, else the in-cluster account, else None (logged: `what` is then off)."""
    if kubeconfig is None and not in_cluster():
        return None
    try:
        return KubeReviews(await api_client(kubeconfig))
    except (config.ConfigException, OSError, ValueError) as exc:
        source = f"kubeconfig {kubeconfig!r}" if kubeconfig else "the in-cluster account"
        raise ReviewError(f"{what}: cannot use {source}: {exc}") from None


class ReviewCache(Generic[K, S, V]):
    """Answers of reviews of a subject (S) by key (K), each kept for `ttl(answer)` seconds (bounded LRU).

    Concurrent asks of one key share one review, run as its own task: a caller that goes away does
    not cancel it for the others. A review that fails is not kept (the next ask tries again). `close`
    cancels the reviews in flight.
    """

    def __init__(self, review: Callable[[S], Awaitable[V]], ttl: Callable[[V], float], size: int = 50_000) -> None:
        self.review = review
        self.ttl = ttl
        self.size = size
        self.reviews = 0  #: reviews asked of the apiserver (a figure for tests and benchmarks)
        self._answers: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._asking: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, subject: S) -> V:
        known = self._answers.get(key)
        if known is not None:
            if known[0] > time.monotonic():
                self._answers.move_to_end(key)
                return known[1]
            del self._answers[key]
        task = self._asking.get(key)
        if task is None:
            task = asyncio.create_task(self._ask(key, subject))
            task.add_done_callback(_retrieve)
            self._asking[key] = task
        return await asyncio.shield(task)

    async def close(self) -> None:
        tasks = list(self._asking.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _ask(self, key: K, subject: S) -> V:
        try:
            self.reviews += 1
            answer = await self.review(subject)
        finally:
            del self._asking[key]
        self._answers[key] = (time.monotonic() + self.ttl(answer), answer)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)
        return answer


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a review's failure seen: its askers may all have gone, and each that stayed got it raised."""
    if not task.cancelled():
        task.exception()
