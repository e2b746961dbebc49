"""The hostile corpus through the whole pipeline: every case of tests/e2e/hostile/ is one VMI whose
agent turns hostile after two healthy ticks, beside a healthy "pulse" VMI whose hostname changes
every tick and a VMI with the real qemu-ga.

Real collector, broker, join, store and API (`guestinfo run`); only the agents are scripted. Checks:
every hostile VMI keeps serving what was valid before (or its bounded form), no stage crashes, and
the pulse VMI's updates keep arriving at their normal pace while the hostile agents misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guestinfo.broker import free_port
from tests.e2e.api_client import get_json
from tests.e2e.hostile_agent import HOSTILE, ScriptedAgent, serve_agent

pytestmark = pytest.mark.integration

CASES = {
    path.stem: json.loads(path.read_text()) for path in sorted(HOSTILE.glob("*.json")) if path.stem != "healthy_agent"
}
BASE = "/apis/subresources.kubevirt.io/v1/namespaces"
VMIS = f"{BASE}/default/virtualmachineinstances"
INTERVAL = 1.0
#: Ticks every hostile agent must have seen before the checks (2 healthy, then hostile ones).
TICKS = 5


def vmi_name(case: str) -> str:
    return case.replace("_", "-")


def node_xml(domains: list[tuple[str, str, str]]) -> str:
    """A test-driver node with one KubeVirt domain per (namespace, name, mac)."""
    return "<node>" + "".join(
        f"""<domain type='test'><name>{ns}_{name}</name>
  <metadata><kubevirt:kubevirt xmlns:kubevirt="http://kubevirt.io"><kubevirt:uid>uid-{name}</kubevirt:uid></kubevirt:kubevirt></metadata>
  <memory>65536</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>
  <devices><interface type='ethernet'><mac address='{mac}'/><alias name='ua-default'/></interface></devices>
</domain>"""
        for ns, name, mac in domains
    ) + "</node>"


def check_case(case: str, data: dict[str, Any], info: dict[str, Any], users: dict[str, Any]) -> None:
    expect = data["expect"]
    rule = f"{case}: {data['rule']}"
    if "guestosinfo" in expect:
        for key, value in expect["guestosinfo"].items():
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    assert info[key][sub] == subvalue, rule
            else:
                assert info.get(key) == value, rule
    if "hostnameLength" in expect:
        assert len(info["hostname"]) == expect["hostnameLength"], rule
    if "guestosinfoUserCount" in expect:
        assert len(info["userList"]) == expect["guestosinfoUserCount"], rule
    if "userlistAtMost" in expect:
        assert expect["userlistAtLeast"] <= len(users["items"]) <= expect["userlistAtMost"], rule


async def test_hostile_agents_hurt_nobody(engine_name: str, tmp_path: Path, qemu_ga: Path) -> None:
    agents = {
        case: ScriptedAgent(mac=f"02:00:00:00:01:{i:02x}", case=data) for i, (case, data) in enumerate(CASES.items())
    }
    pulse = ScriptedAgent(mac="02:00:00:00:02:01", pulse=True)
    domains = [("hostile", vmi_name(case), agent.mac) for case, agent in agents.items()]
    domains += [("default", "pulse", pulse.mac), ("default", "real", "02:00:00:00:02:02")]
    node = tmp_path / "node.xml"
    node.write_text(node_xml(domains))
    port = free_port()
    argv = [sys.executable, "-m", "guestinfo", "--state-dir", str(tmp_path / "state"), "run",
            "--libvirt-uri", f"test://{node}", "--api-listen", f"127.0.0.1:{port}",
            "--interval", str(INTERVAL), "--agent-timeout", "2", "--engine", engine_name,
            "--agent-socket", f"default/pulse={tmp_path / 'pulse.sock'}",
            "--agent-socket", f"default/real={qemu_ga}"]
    for case in agents:
        argv += ["--agent-socket", f"hostile/{vmi_name(case)}={tmp_path / (case + '.sock')}"]
    log_path = tmp_path / "guestinfo.log"

    async with contextlib.AsyncExitStack() as stack:
        for case, agent in agents.items():
            await stack.enter_async_context(serve_agent(tmp_path / f"{case}.sock", agent))
        await stack.enter_async_context(serve_agent(tmp_path / "pulse.sock", pulse))
        session = await stack.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)))
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=log_file, stderr=asyncio.subprocess.STDOUT, start_new_session=True
            )
        try:
            # The pulse: watch its hostname until every hostile agent has been hostile for a few ticks
            # and the pulse shows a tick from after that, i.e. the join has caught up past the hostile phase.
            changes: list[float] = []
            shown = 0
            caught_up_at: int | None = None
            deadline = time.monotonic() + 120
            while caught_up_at is None or shown < caught_up_at:
                assert time.monotonic() < deadline, f"pipeline did not catch up:\n{log_path.read_text()[-3000:]}"
                assert process.returncode is None, log_path.read_text()[-3000:]
                if caught_up_at is None and min(a.ticks for a in agents.values()) >= TICKS:
                    caught_up_at = pulse.ticks + 3
                status, body = await get_json(session, port, f"{VMIS}/pulse/guestosinfo")
                hostname = body.get("hostname", "") if status == 200 else ""  # omitted until the agent answered
                if hostname.startswith("pulse-") and hostname != f"pulse-{shown}":
                    shown = int(hostname.removeprefix("pulse-"))
                    changes.append(time.monotonic())
                await asyncio.sleep(0.1)

            results = {}
            for case in agents:
                path = f"{BASE}/hostile/virtualmachineinstances/{vmi_name(case)}"
                info_status, info = await get_json(session, port, f"{path}/guestosinfo")
                _, users = await get_json(session, port, f"{path}/userlist")
                results[case] = (info_status, info, users)
            real_status, real = await get_json(session, port, f"{VMIS}/real/guestosinfo")
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 60)

    log = log_path.read_text()

    assert code == 0, log[-3000:]
    assert "Traceback" not in log, "no stage may crash or log a traceback"
    assert "exited with code" not in log, "no stage was restarted"
    for case, (info_status, info, users) in results.items():
        assert info_status == 200, f"{case}: {info}"
        check_case(case, CASES[case], info, users)
    assert real_status == 200 and real["guestAgentVersion"]

    # Freshness of the healthy VMI beside them: a change about every tick, never a long stall.
    gaps = [b - a for a, b in itertools.pairwise(changes)]
    assert len(changes) >= 4, f"the pulse VMI changed only {len(changes)} times"
    assert max(gaps) < 3 * INTERVAL + 2, f"the pulse VMI stalled for {max(gaps):.1f}s while agents were hostile"
