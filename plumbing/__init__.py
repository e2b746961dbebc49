"""What every stage runs on, beside `schemas`: Kafka clients with the broker's quirks explained once
(`plumbing.kafka`), back-off (`plumbing.backoff`), logging that does not repeat itself
(`plumbing.logs`), the metrics registry (`plumbing.metrics`) and the one consume loop with its failure
policy (`plumbing.consuming`). Every stage may import it; it imports no stage.
"""
