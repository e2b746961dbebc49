"""The metrics registry of every stage: prometheus_client's default one, served at `/metrics` by each
process (`guestinfo.stages` for the collector and the join, the API for `serve`).

Names follow `guestinfo_<stage>_<noun>_<unit>`; counters get prometheus_client's `_total`. A stage
declares its metrics at module level in its own `metrics` module, once per process.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

__all__ = ["REGISTRY", "CollectorRegistry"]
