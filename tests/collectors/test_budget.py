"""The byte budget of one agent report: a hostile guest's huge lists are halved until the report fits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from collectors.agent_protocol import AgentSocketClient
from collectors.budget import AGENT_REPORT_BUDGET, fit_report
from schemas.codec import encode
from schemas.events import AgentReport, AgentVersionInfo, VMIRef
from schemas.kubevirt import GuestAgentCommandInfo, GuestOSUser
from tests.collectors.fake_agent import Answer, fake_agent, returning, sync_reply
from tests.collectors.ticks import poll_agent

VMI = VMIRef(namespace="ns", name="vm")


def trimmed_count() -> float:
    return REGISTRY.get_sample_value("guestinfo_collector_reports_trimmed_total") or 0.0


def hostile(request: dict[str, Any]) -> Answer:
    """An agent that fills every list to the brim (each reply stays under the 1 MiB reply limit)."""
    long = "x" * 1000
    replies: dict[str, Any] = {
        "guest-info": {"version": "9", "supported_commands": [
            {"name": f"guest-{i}-{long[:200]}", "enabled": True, "success-response": True} for i in range(1000)]},
        "guest-get-users": [{"user": f"{i}{long}", "domain": "", "login-time": 1.0} for i in range(900)],
        "guest-get-fsinfo": [{"name": f"{i}{long[:400]}", "mountpoint": f"/{long[:400]}", "type": "ext4",
                              "disk": []} for i in range(900)],
        "guest-network-get-interfaces": [{"name": f"{i}{long[:600]}", "hardware-address": "02:00:00:00:00:01",
                                          "ip-addresses": []} for i in range(900)],
        "guest-get-osinfo": {"name": long}, "guest-get-host-name": {"host-name": long},
        "guest-get-timezone": {"zone": long, "offset": 0}, "guest-fsfreeze-status": long,
    }
    if request["execute"] == "guest-sync":
        return sync_reply(request)
    return returning(request, replies[request["execute"]])


async def test_a_hostile_agents_report_is_trimmed_to_the_budget(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    before = trimmed_count()
    async with fake_agent(sock, hostile):
        client = AgentSocketClient(str(sock), timeout=5)
        try:
            report, synced = await poll_agent(client, VMI, node="n", observed_at=1.0, budget=30)
        finally:
            await client.close()
    assert synced
    assert len(encode(report)) <= AGENT_REPORT_BUDGET
    note = report.errors["report"]
    assert re.fullmatch(r"trimmed (\w+ \d+→\d+)(, \w+ \d+→\d+)* to fit 512 KiB", note), note
    assert "users 900→" in note
    assert report.users is not None and 0 < len(report.users) < 900
    assert report.users[0].user_name.startswith("0x"), "the first entries are kept"
    assert set(report.errors) == {"report"}
    assert trimmed_count() == before + 1


def test_the_largest_list_is_halved_until_the_report_fits() -> None:
    users = [GuestOSUser(user_name=f"{i:04}" + "u" * 996) for i in range(1000)]
    commands = [GuestAgentCommandInfo(name=f"c{i}") for i in range(100)]
    report = AgentReport(vmi=VMI, node="n", observed_at=1.0, connected=True, users=users,
                         info=AgentVersionInfo(supported_commands=commands))
    fitted = fit_report(report, budget=100_000)
    assert fitted.errors == {"report": "trimmed users 1000→62 to fit 97 KiB"}
    assert fitted.users == users[:62] and fitted.info == report.info
    assert len(encode(fitted)) <= 100_000


def test_a_report_within_the_budget_is_left_alone() -> None:
    report = AgentReport(vmi=VMI, node="n", observed_at=1.0, connected=True, users=[GuestOSUser(user_name="a")])
    before = trimmed_count()
    assert fit_report(report) is report
    assert trimmed_count() == before


def test_the_supported_commands_are_never_cut() -> None:
    """The agent's command list is bounded already; cutting it would hide the basic commands."""
    commands = [GuestAgentCommandInfo(name=f"guest-{i:04}-" + "c" * 200, enabled=True) for i in range(1000)]
    users = [GuestOSUser(user_name=f"{i:04}" + "u" * 200) for i in range(100)]
    report = AgentReport(vmi=VMI, node="n", observed_at=1.0, connected=True, users=users,
                         info=AgentVersionInfo(supported_commands=commands))
    fitted = fit_report(report, budget=100_000)
    assert fitted.info == report.info
    assert fitted.users == []
    assert "supportedCommands" not in fitted.errors["report"]
