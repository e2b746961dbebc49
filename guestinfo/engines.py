"""The two Kafka engines `guestinfo broker` and `guestinfo run` can start on this machine:

- `tansu`: the embedded Tansu broker (`guestinfo.broker`), memory only, one node, up in a second: the
  default of `make run` and of the demo;
- `kafka`: Apache Kafka (`guestinfo.kafka`), a KRaft cluster of 1 to 5 nodes with its log on disk, the
  engine production runs, up in 7-20 s.
"""

from __future__ import annotations

from pathlib import Path

from guestinfo.broker import BrokerError, EmbeddedBroker
from guestinfo.config import UsageError
from guestinfo.kafka import KafkaCluster

#: A started engine: what a stage needs of it is `bootstrap_servers` and `replication_factor`.
Broker = EmbeddedBroker | KafkaCluster


def engine(name: str, *, brokers: int = 1, data_dir: Path | None = None, port: int | None = None) -> Broker:
    """The engine `name`, not started yet; options only Apache Kafka has are refused for Tansu."""
    if name == "kafka":
        try:
            return KafkaCluster(brokers, data_dir, port=port)
        except BrokerError as exc:  # a value out of range: before anything starts
            raise UsageError(str(exc)) from exc
    if brokers != 1 or data_dir is not None:
        raise UsageError("--brokers and --data-dir are options of --engine kafka (Tansu is one node, memory only)")
    return EmbeddedBroker(port=port)
