"""Bad configuration is reported before any process starts, and a stage that refuses its configuration
is not restarted in a loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestinfo.supervisor import CONFIG_EXIT, ChildSpec, StageFailed, Supervisor

NOT_PEM = "not a certificate"

#: (command line after `guestinfo --state-dir DIR`, what the one error line says)
REFUSED = [
    (["run", "--store", "mysql://x"], "--store: unsupported store URL 'mysql://x'"),
    (["run", "--store", "sqlite://relative.db"], "--store: bad SQLite URL"),
    (["run", "--api-listen", "0.0.0.0:8080"], "the API would listen on 0.0.0.0 with no authentication"),
    (["run", "--api-listen", "nowhere"], "--api-listen 'nowhere': expected HOST:PORT"),
    (["run", "--tls-cert-file", "/nonexistent.crt", "--tls-private-key-file", "/nonexistent.key"],
     "--tls-cert-file '/nonexistent.crt': cannot read it"),
    (["run", "--tls-cert-file", "BAD", "--tls-private-key-file", "BAD"], "not a usable certificate and key"),
    (["run", "--client-ca-file", "BAD"], "no PEM certificate in it"),
    (["run", "--client-ca-file", "/nonexistent"], "--client-ca-file '/nonexistent': cannot read it"),
    (["run", "--authentication-token-webhook-cache-ttl", "ten"], "expected a duration such as 10s"),
    (["run", "--launcher-pods-dir", "/x", "--launcher-uri", "qemu:///system"], "it must contain {socket}"),
    (["run", "--launcher-uri", "qemu+unix:///session?socket={socket}"], "--launcher-uri needs --launcher-pods-dir"),
    (["run", "--watch-history", "0.5s"], "--watch-history '0.5s': must be at least 1s"),
    (["serve", "--bootstrap-servers", "127.0.0.1:1", "--watch-history", "forever"], "expected a duration such as 10s"),
    (["run", "--insecure-no-auth", "--authorization-kubeconfig", "BAD"], "contradicts"),
    (["serve", "--bootstrap-servers", "127.0.0.1:1", "--store", "mysql://x"], "unsupported store URL"),
    (["serve", "--bootstrap-servers", "127.0.0.1:1", "--api-listen", "10.0.0.1:0"], "with no authentication"),
    (["run", "--bootstrap-servers", "127.0.0.1:1", "--engine", "kafka"],
     "--bootstrap-servers names a Kafka cluster to use; --engine and --brokers start one here"),
    (["run", "--brokers", "3"], "--brokers and --data-dir are options of --engine kafka"),
    (["run", "--engine", "kafka", "--brokers", "0"], "--brokers 0: Apache Kafka here runs 1 to 5 nodes"),
]


@pytest.mark.parametrize(("argv", "message"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_refused_before_anything_starts(argv: list[str], message: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text(NOT_PEM)
    argv = [str(bad) if arg == "BAD" else arg for arg in argv]
    started = time.monotonic()
    outside_a_cluster = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    result = subprocess.run(
        [sys.executable, "-m", "guestinfo", "--state-dir", str(tmp_path / "state"), *argv],
        capture_output=True, text=True, timeout=60, env=outside_a_cluster,
    )
    assert result.returncode == CONFIG_EXIT, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "started" not in result.stderr, "nothing may start"
    assert time.monotonic() - started < 20


async def test_a_stage_refusing_its_configuration_is_not_restarted(tmp_path: Path) -> None:
    argv = ["--state-dir", str(tmp_path), "serve", "--bootstrap-servers", "127.0.0.1:1", "--store", "mysql://x"]
    supervisor = Supervisor([ChildSpec("serve", argv)])
    await supervisor.start()
    try:
        with pytest.raises(StageFailed, match="serve refused its configuration"):
            await asyncio.wait_for(supervisor.unless_failed(asyncio.sleep(60)), 30)
        assert supervisor.children[0].restarts == 0
    finally:
        await supervisor.stop()
