"""The collectors stage: libvirt domains and guest agents of one node → `guestinfo.domain.v1` and
`guestinfo.agent.v1`.

Entry points: `run_collector(config)` (the loop), `NodeCollector(config).collect_once()` (one tick).
"""

from collectors.config import CollectorConfig
from collectors.node import NodeCollector, TickReports, run_collector

__all__ = ["CollectorConfig", "NodeCollector", "TickReports", "run_collector"]
