"""The collectors stage: libvirt domains and guest agents of one node → `guestinfo.domain.v1` and
`guestinfo.agent.v1`.

Entry points: `run_collector(config)` (the loop), `NodeCollector(config).tick(emit)` (start one tick;
each agent poll hands its reports to `emit` when it ends), `NodeCollector(config).collect_once()` (one
tick, waiting for its polls). Metrics: `collectors.metrics` (prometheus_client's default registry).
"""

from collectors.config import CollectorConfig
from collectors.node import Emit, NodeCollector, TickReports, run_collector

__all__ = ["CollectorConfig", "Emit", "NodeCollector", "TickReports", "run_collector"]
