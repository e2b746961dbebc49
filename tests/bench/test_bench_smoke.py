"""`guestinfo bench --size small`: the CI smoke run of the benchmark (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

POSITIVE_FIGURES = (
    "join_faust_events_per_s",
    "join_raw_events_per_s",
    "join_ratio_faust_raw",
    "join_faust_events_per_s_kafka",
    "join_raw_events_per_s_kafka",
    "join_ratio_faust_raw_kafka",
    "join_faust_ceiling_events_per_s",
    "join_faust_ceiling_table_events_per_s",
    "join_faust_ceiling_batched_events_per_s",
    "join_ratio_ceiling_table",
    "calibration_ms",
    "state_memory_resident_mb",
    "state_memory_restart_s",
    "state_rocksdb_resident_mb",
    "state_rocksdb_restart_s",
    "rest_requests_per_s",
    "rest_p99_ms",
    "rest_secured_requests_per_s",
    "rest_secured_ratio",
    "rest_floor_requests_per_s",
    "list_0_p99_ms",
    "collector_launchers_percent_of_core_per_1000_vmis",
    "list_1_p99_ms",
)


def test_small_bench_prints_the_table_and_writes_figures(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "guestinfo", "bench", "--size", "small", "--json", str(output)],
        capture_output=True, text=True, timeout=480,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "join, Faust worker" in done.stdout
    lines = done.stdout.splitlines()
    for engine in ("tansu", "Kafka x3"):  # the engine column
        for measure in ("join, Faust worker (1 process)", "join, plain aiokafka loop", "end-to-end latency"):
            assert any(line.startswith(measure) and f" {engine} " in line for line in lines), f"{measure} on {engine}"
    assert "Faust ceiling: take_events, no work" in done.stdout
    assert "join, Faust worker / Faust ceiling + one table write per key" in done.stdout
    assert "calibration: fixed pure-Python workload" in done.stdout
    assert "join state @ 1,000 VMIs, table in rocksdb" in done.stdout
    assert "REST guestosinfo reads/s" in done.stdout
    assert "REST reads/s, secured (TLS + token + SAR, cached)" in done.stdout
    assert "REST floor: a bare aiohttp handler" in done.stdout
    assert "REST list, fieldSelector status.nodeName=node-3" in done.stdout
    assert "collector CPU per 1000 VMIs over 10 launchers" in done.stdout
    assert "Traceback" not in done.stderr
    figures = json.loads(output.read_text())["figures"]
    for name in POSITIVE_FIGURES:
        value = figures[name]
        assert isinstance(value, int | float) and value > 0, f"{name} = {value!r}"
