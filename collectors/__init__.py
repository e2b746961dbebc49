"""The collectors stage: libvirt domains and guest agents of one node → `guestinfo.domain.v1` and
`guestinfo.agent.v1`.

Entry points: `run_collector(config)` (the loop), `NodeCollector(config).tick(emit)` (start one tick;
each agent poll hands its reports to `emit` when it ends). Metrics: `collectors.metrics` (`plumbing.metrics`).
"""

from collectors.config import CollectorConfig
from collectors.node import Emit, NodeCollector, TickReports, run_collector

__all__ = ["CollectorConfig", "Emit", "NodeCollector", "TickReports", "run_collector"]
