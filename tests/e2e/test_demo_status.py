"""End to end through the VMI status sink: `guestinfo run --demo --kube-api URL` against the strict
Kubernetes emulator. The demo VMI's status must get this machine's OS, the AgentConnected condition,
and interfaces merged from the domain (this machine's MACs) and the real guest agent."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from guestinfo.broker import free_port
from tests.e2e.test_demo_pipeline import os_release
from tests.sinks.strict_kmock import StrictKubernetesEmulator

pytestmark = [pytest.mark.integration, pytest.mark.kmock(cls=StrictKubernetesEmulator)]


def host_addresses(interface: str) -> list[str]:
    """IPv4 addresses of a host interface, in the kernel's order (`ip -o -4 addr`)."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", interface], capture_output=True, text=True)
    return [line.split()[3].split("/")[0] for line in out.stdout.splitlines()]


def nic_with_mac(mac: str) -> str:
    """The name of this machine's interface with that MAC."""
    return next(p.name for p in sorted(Path("/sys/class/net").iterdir()) if (p / "address").read_text().strip() == mac)


async def test_demo_status_reaches_the_vmi(kmock: StrictKubernetesEmulator, engine_name: str, tmp_path: Path) -> None:
    kmock.seed_vmi("default", "demo", status={"phase": "Running"})
    log_path = tmp_path / "guestinfo.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guestinfo", "--state-dir", str(tmp_path / "state"), "run", "--demo",
            "--api-listen", f"127.0.0.1:{free_port()}", "--interval", "1", "--kube-api", str(kmock.url),
            "--engine", engine_name,
            stdout=log_file, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 90
            status: dict[str, Any] = {}
            while time.monotonic() < deadline:
                assert process.returncode is None, log_path.read_text()[-4000:]
                status = kmock.vmi("default", "demo").get("status", {})
                interfaces = status.get("interfaces", [])
                if status.get("guestOSInfo", {}).get("name") and any("interfaceName" in i for i in interfaces):
                    break
                await asyncio.sleep(0.5)
            else:
                pytest.fail(f"status never completed: {status}\n{log_path.read_text()[-4000:]}")
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 60)

    assert process.returncode == 0
    assert status["phase"] == "Running", "fields the sink does not own are kept"
    assert status["guestOSInfo"]["name"] == os_release()["NAME"]
    assert [c["type"] for c in status["conditions"]] == ["AgentConnected"]
    default = status["interfaces"][0]
    assert default["name"] == "default"
    assert default["infoSource"] == "domain, guest-agent"
    nic = nic_with_mac(default["mac"])
    assert default["interfaceName"] == nic
    addresses = host_addresses(nic)
    if addresses:
        assert default["ipAddress"] == addresses[0]
    for request in kmock.patches():
        assert request.headers["Content-Type"].startswith("application/json-patch+json")
        assert request.subresource is None, "the VMI has no /status subresource"
