"""Prometheus metrics of the sinks stage, on a registry of their own (`REGISTRY`), served at /metrics.

Names follow `guestinfo_sink_<noun>_<unit>`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

API_REQUESTS = Counter(
    "guestinfo_sink_api_requests",
    "HTTP requests served by the REST API, by endpoint and status code.",
    ["endpoint", "code"],
    registry=REGISTRY,
)
API_LATENCY = Histogram(
    "guestinfo_sink_api_request_duration_seconds",
    "Time to answer an HTTP request of the REST API, by endpoint.",
    ["endpoint"],
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
STORE_WRITES = Counter(
    "guestinfo_sink_store_records_written",
    "Rows changed in the store by the store sink, by operation (upsert or delete).",
    ["op"],
    registry=REGISTRY,
)
RECORDS_SKIPPED = Counter(
    "guestinfo_sink_records_skipped",
    "Topic records a sink skipped, by sink and reason.",
    ["sink", "reason"],
    registry=REGISTRY,
)
STATUS_PATCHES = Counter(
    "guestinfo_sink_status_patches",
    "JSON patches of VMI status sent by the status sink, by result.",
    ["result"],
    registry=REGISTRY,
)
LAST_FETCH = Gauge(
    "guestinfo_sink_last_fetch_timestamp_seconds",
    "When the sink's consumer last had an answer from the brokers for its partitions (Unix time), by sink: "
    "a value that stops moving means Kafka is away or the sink is stuck.",
    ["sink"],
    registry=REGISTRY,
)
GUEST_METRICS_RECORDS = Counter(
    "guestinfo_sink_guest_metrics_records",
    "Merged-topic records read by the guest metrics sink, by outcome (record, tombstone, stale, undecodable, "
    "bad_key).",
    ["outcome"],
    registry=REGISTRY,
)
