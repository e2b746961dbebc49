"""The Kubernetes status sink: `guestinfo.vmi.v1` → the VMI's `.status` (guestOSInfo, interfaces,
AgentConnected, AgentVersionNotSupported).

Per record: GET the VMI, compute the JSON patch (`sinks.status_patch`), and if anything changes send
it to the MAIN resource with `application/json-patch+json` (the VMI CRD has no /status subresource;
docs/upstream-behaviour.md §5). A conflict (409, or 422 from the failed resourceVersion `test`) re-reads
and retries with capped, jittered backoff; 404 means the VMI is gone. Offsets are committed after a
batch is applied; a VMI still failing after its retries makes the whole batch be fetched again.

Note: on a real cluster with virt-handler running, virt-handler owns these fields and rewrites them;
this sink is for clusters where nothing else writes them.
"""

from __future__ import annotations

import asyncio
import logging
import random

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field

from plumbing.backoff import Backoff
from sinks.consuming import FetchWatch, VMIChange, consume_batches, make_consumer
from sinks.kube_client import api_client
from sinks.metrics import STATUS_PATCHES
from sinks.status_patch import JsonObject, status_patch

log = logging.getLogger(__name__)

GROUP = "kubevirt.io"
VERSION = "v1"
PLURAL = "virtualmachineinstances"
JSON_PATCH = "application/json-patch+json"
#: Records processed at once (distinct VMIs of one batch).
CONCURRENCY = 8


class StatusConfig(BaseModel):
    """Settings of `run_status_sink`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(description="Kafka bootstrap servers, `host:port[,host:port]`.")
    kube_api: str | None = Field(
        default=None,
        description="Plain API server URL (e.g. `http://127.0.0.1:PORT`), no auth; wins over kubeconfig.",
    )
    kubeconfig: str | None = Field(
        default=None, description="Kubeconfig file; if neither is set, the in-cluster service account."
    )
    group_id: str = Field(default="guestinfo-status", min_length=1, description="Consumer group.")
    max_retries: int = Field(default=5, ge=0, le=100, description="Retries per record after a failed write.")
    backoff_base: float = Field(default=0.1, gt=0, description="First retry delay, seconds (doubles).")
    backoff_max: float = Field(default=5.0, gt=0, description="Longest retry delay, seconds.")


class Outcome:
    """What happened to one change (for logs, metrics and tests)."""

    PATCHED = "patched"
    UNCHANGED = "unchanged"
    GONE = "gone"
    #: Still failing after the retries (API down, conflicts): the batch is fetched again later.
    FAILED = "failed"
    #: The API refused the write for good (4xx other than 404/409/422/429): skipped, never retried.
    REJECTED = "rejected"


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: transport errors, conflicts (409, or 422 from the resourceVersion test), 429, 5xx."""
    if isinstance(exc, ApiException):
        return exc.status in (409, 422, 429) or (exc.status or 0) >= 500
    return True


async def make_api_client(cfg: StatusConfig) -> client.ApiClient:
    """An ApiClient for `kube_api` (plain URL), a kubeconfig file, or the in-cluster account."""
    if not cfg.kube_api:
        return await api_client(cfg.kubeconfig)
    configuration = client.Configuration()
    configuration.host = cfg.kube_api.rstrip("/")
    return client.ApiClient(configuration)


def jittered(pause: float) -> float:
    """A pause between half and all of `pause`: replicas retrying the same VMI do not meet again."""
    return random.uniform(pause / 2, pause)


async def _get_vmi(api: client.CustomObjectsApi, namespace: str, name: str) -> JsonObject:
    vmi: JsonObject = await api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return vmi


async def _send_patch(api: client.CustomObjectsApi, namespace: str, name: str, patch: list[JsonObject]) -> None:
    # `_content_type` is accepted at run time but missing from the package's stub; always explicit.
    await api.patch_namespaced_custom_object(  # type: ignore[call-arg]
        GROUP, VERSION, namespace, PLURAL, name, patch, _content_type=JSON_PATCH
    )


async def sync_once(api: client.CustomObjectsApi, change: VMIChange) -> str:
    """One read-compute-write round; raises ApiException/transport errors for the caller to judge."""
    vmi = await _get_vmi(api, change.namespace, change.name)
    patch = status_patch(vmi, change.record, change.uid)
    if not patch:
        return Outcome.UNCHANGED
    await _send_patch(api, change.namespace, change.name, patch)
    return Outcome.PATCHED


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


async def sync_vmi(api: client.CustomObjectsApi, change: VMIChange, cfg: StatusConfig) -> str:
    """Bring one VMI's status to `change`, retrying conflicts and errors a bounded number of times."""
    backoff = Backoff(cfg.backoff_base, cfg.backoff_max)
    while True:
        try:
            outcome = await sync_once(api, change)
        except ApiException as exc:
            if exc.status == 404:
                log.info("status sink: VMI %s is gone (404), skipping", change.key)
                return Outcome.GONE
            if not is_transient(exc):
                log.error("status sink: the API refused the status of VMI %s: %s", change.key, _describe(exc))
                STATUS_PATCHES.labels(Outcome.REJECTED).inc()
                return Outcome.REJECTED
            error: BaseException = exc
            conflict = exc.status in (409, 422)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error, conflict = exc, False
        else:
            STATUS_PATCHES.labels(outcome).inc()
            if outcome == Outcome.PATCHED:
                log.info("status sink: patched status of VMI %s", change.key)
            return outcome
        delay = jittered(backoff.next())
        attempt = backoff.failures
        if attempt > cfg.max_retries:
            log.error(
                "status sink: VMI %s still failing after %d attempts, its batch will be fetched again: %s",
                change.key, attempt, _describe(error),
            )
            STATUS_PATCHES.labels(Outcome.FAILED).inc()
            return Outcome.FAILED
        what = "conflict" if conflict else "error"
        log.warning(
            "status sink: %s on VMI %s: %s; retry #%d/%d in %.2fs",
            what, change.key, _describe(error), attempt, cfg.max_retries, delay,
        )
        await asyncio.sleep(delay)


def latest_per_vmi(changes: list[VMIChange]) -> list[VMIChange]:
    """Only the last change of each VMI in a batch matters (later records supersede earlier ones)."""
    latest: dict[str, VMIChange] = {}
    for change in changes:
        latest.pop(change.key, None)
        latest[change.key] = change
    return list(latest.values())


async def process_batch(api: client.CustomObjectsApi, changes: list[VMIChange], cfg: StatusConfig) -> list[str]:
    """Sync the VMIs of one batch, a few at a time; never raises for one VMI's failure."""
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def guarded(change: VMIChange) -> str:
        async with semaphore:
            try:
                return await sync_vmi(api, change, cfg)
            except Exception as exc:  # a bug or an odd object must not stop the sink
                log.error("status sink: VMI %s failed: %s", change.key, _describe(exc))
                STATUS_PATCHES.labels(Outcome.FAILED).inc()
                return Outcome.FAILED

    return list(await asyncio.gather(*(guarded(c) for c in latest_per_vmi(changes))))


def batch_done(outcomes: list[str]) -> bool:
    """A batch is done unless a VMI still failed after its retries."""
    return Outcome.FAILED not in outcomes


async def run_status_sink(config: StatusConfig, watch: FetchWatch | None = None) -> None:
    """Consume `guestinfo.vmi.v1` and keep VMI statuses in step, until cancelled; `watch` follows the
    fetches (the process's /healthz)."""
    api_client = await make_api_client(config)
    try:
        api = client.CustomObjectsApi(api_client)
        consumer = make_consumer(config.bootstrap_servers, config.group_id)
        await consumer.start()
        target = api_client.configuration.host
        log.info("status sink consuming as group %s, writing VMI status to %s", config.group_id, target)
        async def apply(changes: list[VMIChange]) -> bool:
            return batch_done(await process_batch(api, changes, config))

        try:
            await consume_batches(consumer, "status", apply, watch)
        finally:
            await consumer.stop()
            log.info("status sink stopped")
    finally:
        await api_client.close()


__all__ = ["StatusConfig", "run_status_sink", "sync_vmi"]
