"""The status sink against the strict Kubernetes emulator (real HTTP, kubernetes_asyncio)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from kmock import Request
from kubernetes_asyncio import client

from guestinfo.engines import Broker
from schemas.kubevirt import VMICondition
from schemas.topics import UID_HEADER, VMI_TOPIC
from sinks.consuming import VMIChange, decode_message
from sinks.status_patch import status_patch
from sinks.vmi_status import Outcome, StatusConfig, make_api_client, run_status_sink, sync_vmi
from tests.sinks.conftest import eventually, produce
from tests.sinks.records import OS, PROBE_TIME, full_record
from tests.sinks.strict_kmock import StrictKubernetesEmulator

pytestmark = pytest.mark.kmock(cls=StrictKubernetesEmulator)

NS = "default"
READY = {"type": "Ready", "status": "True", "lastProbeTime": None, "lastTransitionTime": "2026-11-27T09:00:00Z"}
EXISTING_STATUS: dict[str, Any] = {
    "phase": "Running",
    "conditions": [READY],
    "interfaces": [
        {"name": "default", "mac": "52:54:00:aa:bb:cc", "podInterfaceName": "eth0", "ipAddress": "10.0.2.2"}
    ],
}
WANTED_INTERFACE = {
    "ipAddress": "10.0.2.2",
    "mac": "52:54:00:aa:bb:cc",
    "name": "default",
    "ipAddresses": ["10.0.2.2", "fd10::2"],
    "podInterfaceName": "eth0",
    "interfaceName": "eth0",
    "infoSource": "domain, guest-agent",
    "queueCount": 1,
    "linkState": "up",
}
AGENT = {"type": "AgentConnected", "status": "True", "lastProbeTime": PROBE_TIME, "lastTransitionTime": None}
CONFIG = StatusConfig(bootstrap_servers="unused:9092", max_retries=3, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture
async def api(kmock: StrictKubernetesEmulator) -> AsyncIterator[client.CustomObjectsApi]:
    api_client = await make_api_client(CONFIG.model_copy(update={"kube_api": str(kmock.url)}))
    try:
        yield client.CustomObjectsApi(api_client)
    finally:
        await api_client.close()


def change_for(name: str, agent_connected: bool = True, tombstone: bool = False) -> VMIChange:
    return VMIChange(NS, name, None if tombstone else full_record(NS, name, agent_connected=agent_connected))


def assert_json_patch_on_main_resource(request: Request, name: str, ns: str = NS) -> list[dict[str, Any]]:
    assert request.url.path == f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}"
    assert request.subresource is None
    assert request.headers["Content-Type"] == "application/json-patch+json"
    ops: list[dict[str, Any]] = orjson.loads(request.body)
    assert ops[0]["op"] == "test" and ops[0]["path"] == "/metadata/resourceVersion"
    return ops


async def test_adds_guest_info_interfaces_and_agent_condition(
    kmock: StrictKubernetesEmulator, api: client.CustomObjectsApi
) -> None:
    kmock.seed_vmi(NS, "vm1", status=EXISTING_STATUS)
    version = kmock.vmi(NS, "vm1")["metadata"]["resourceVersion"]
    assert await sync_vmi(api, change_for("vm1"), CONFIG) == Outcome.PATCHED
    status = kmock.vmi(NS, "vm1")["status"]
    assert status["phase"] == "Running"
    assert status["guestOSInfo"] == OS.model_dump(mode="json")
    assert status["interfaces"] == [WANTED_INTERFACE]
    assert status["conditions"] == [READY, AGENT]
    assert kmock.vmi(NS, "vm1")["metadata"]["resourceVersion"] != version
    [request] = kmock.patches()
    ops = assert_json_patch_on_main_resource(request, "vm1")
    assert ops[0]["value"] == version
    assert [(op["op"], op["path"]) for op in ops[1:]] == [
        ("add", "/status/guestOSInfo"),
        ("replace", "/status/interfaces"),
        ("replace", "/status/conditions"),
    ]


async def test_adds_status_when_absent(kmock: StrictKubernetesEmulator, api: client.CustomObjectsApi) -> None:
    kmock.seed_vmi(NS, "fresh")
    assert await sync_vmi(api, change_for("fresh"), CONFIG) == Outcome.PATCHED
    status = kmock.vmi(NS, "fresh")["status"]
    assert status["conditions"] == [AGENT]
    assert status["interfaces"] == [{k: v for k, v in WANTED_INTERFACE.items() if k != "podInterfaceName"}]
    ops = assert_json_patch_on_main_resource(kmock.patches()[0], "fresh")
    assert [(op["op"], op["path"]) for op in ops[1:]] == [("add", "/status")]


async def test_no_write_when_nothing_changes(kmock: StrictKubernetesEmulator, api: client.CustomObjectsApi) -> None:
    kmock.seed_vmi(NS, "vm1", status=EXISTING_STATUS)
    assert await sync_vmi(api, change_for("vm1"), CONFIG) == Outcome.PATCHED
    # The same record again, and a newer probe time: nothing to write (no patch flood).
    assert await sync_vmi(api, change_for("vm1"), CONFIG) == Outcome.UNCHANGED
    later = full_record(NS, "vm1", revision=2)
    probed = later.status.conditions[0].model_copy(update={"last_probe_time": "2026-11-27T11:00:00Z"})
    later_status = later.status.model_copy(update={"conditions": [probed]})
    later = later.model_copy(update={"status": later_status})
    assert await sync_vmi(api, VMIChange(NS, "vm1", later), CONFIG) == Outcome.UNCHANGED
    assert len(kmock.patches()) == 1


async def test_disconnected_agent_and_tombstone_remove_agent_condition(
    kmock: StrictKubernetesEmulator, api: client.CustomObjectsApi
) -> None:
    kmock.seed_vmi(NS, "vm1", status=EXISTING_STATUS)
    kmock.seed_vmi(NS, "vm2", status=EXISTING_STATUS)
    assert await sync_vmi(api, change_for("vm1"), CONFIG) == Outcome.PATCHED
    assert await sync_vmi(api, change_for("vm2"), CONFIG) == Outcome.PATCHED
    assert await sync_vmi(api, change_for("vm1", agent_connected=False), CONFIG) == Outcome.PATCHED
    assert kmock.vmi(NS, "vm1")["status"]["conditions"] == [READY]
    assert await sync_vmi(api, change_for("vm2", tombstone=True), CONFIG) == Outcome.PATCHED
    status = kmock.vmi(NS, "vm2")["status"]
    assert status["conditions"] == [READY]
    assert status["guestOSInfo"] == OS.model_dump(mode="json")  # a tombstone touches only the condition
    ops = assert_json_patch_on_main_resource(kmock.patches()[-1], "vm2")
    assert [(op["op"], op["path"]) for op in ops[1:]] == [("replace", "/status/conditions")]
    # Nothing of ours left: no further write.
    assert await sync_vmi(api, change_for("vm2", tombstone=True), CONFIG) == Outcome.UNCHANGED


async def test_retries_after_a_resource_version_conflict(
    kmock: StrictKubernetesEmulator, api: client.CustomObjectsApi, caplog: pytest.LogCaptureFixture
) -> None:
    kmock.seed_vmi(NS, "vm1", status=EXISTING_STATUS)

    def concurrent_writer(emulator: StrictKubernetesEmulator, request: Request) -> None:
        # Another controller writes between our GET and our PATCH: a new condition, a new version.
        obj = emulator.objects["kubevirt.io/v1/virtualmachineinstances", NS, "vm1"]
        obj.patch({"metadata": {"resourceVersion": emulator.next_resource_version()}})
        obj.patch({"status": {"conditions": [READY, {"type": "Paused", "status": "False"}]}})

    kmock.before_write.append(concurrent_writer)
    caplog.set_level(logging.WARNING, logger="sinks")
    assert await sync_vmi(api, change_for("vm1"), CONFIG) == Outcome.PATCHED
    first, second = kmock.patches()
    first_ops = assert_json_patch_on_main_resource(first, "vm1")
    second_ops = assert_json_patch_on_main_resource(second, "vm1")
    assert first_ops[0]["value"] != second_ops[0]["value"]
    conditions = kmock.vmi(NS, "vm1")["status"]["conditions"]
    assert conditions == [READY, {"type": "Paused", "status": "False"}, AGENT]  # the other writer's kept
    assert "conflict on VMI default/vm1: HTTP 422" in caplog.text


async def test_gone_vmi_is_skipped(kmock: StrictKubernetesEmulator, api: client.CustomObjectsApi) -> None:
    kmock.seed_vmi(NS, "other")
    assert await sync_vmi(api, change_for("ghost"), CONFIG) == Outcome.GONE
    assert await sync_vmi(api, change_for("ghost", tombstone=True), CONFIG) == Outcome.GONE
    assert kmock.patches() == []


async def test_unreachable_api_fails_after_bounded_retries(caplog: pytest.LogCaptureFixture) -> None:
    config = CONFIG.model_copy(update={"kube_api": "http://127.0.0.1:1", "max_retries": 2})
    api_client = await make_api_client(config)
    try:
        api = client.CustomObjectsApi(api_client)
        assert await sync_vmi(api, change_for("vm1"), config) == Outcome.FAILED
    finally:
        await api_client.close()
    assert "VMI default/vm1 still failing after 3 attempts, its batch will be fetched again" in caplog.text
    assert not any(r.exc_info for r in caplog.records)


async def test_kubeconfig_is_honoured(kmock: StrictKubernetesEmulator, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters: [{{name: test, cluster: {{server: '{str(kmock.url).rstrip('/')}'}}}}]\n"
        "users: [{name: test, user: {token: abc}}]\n"
        "contexts: [{name: test, context: {cluster: test, user: test}}]\n"
    )
    kmock.seed_vmi(NS, "vm1", status=EXISTING_STATUS)
    config = CONFIG.model_copy(update={"kubeconfig": str(kubeconfig)})
    api_client = await make_api_client(config)
    try:
        outcome = await sync_vmi(client.CustomObjectsApi(api_client), change_for("vm1"), config)
    finally:
        await api_client.close()
    assert outcome == Outcome.PATCHED
    assert kmock.patches()[0].headers["Authorization"] == "Bearer abc"


def test_patch_is_empty_for_a_tombstone_without_our_condition() -> None:
    vmi = {"metadata": {"resourceVersion": "1"}, "status": {"conditions": [READY]}}
    assert status_patch(vmi, None) == []


def test_a_tombstone_of_an_earlier_vmi_leaves_the_new_one_alone() -> None:
    """The sink is behind: the name's VMI was deleted and created again before the tombstone came."""
    vmi = {"metadata": {"resourceVersion": "3", "uid": "uid-2"}, "status": {"conditions": [READY, AGENT]}}
    assert status_patch(vmi, None, removed_uid="uid-1") == []
    for removed in ("uid-2", ""):  # its own removal, or a tombstone that names no uid
        ops = status_patch(vmi, None, removed_uid=removed)
        assert ops[-1] == {"op": "replace", "path": "/status/conditions", "value": [READY]}


async def test_run_status_sink_end_to_end(
    broker: Broker, kmock: StrictKubernetesEmulator, unique: str
) -> None:
    ns = f"ns-{unique}"
    kmock.seed_vmi(ns, "vm1", status=EXISTING_STATUS)
    kmock.seed_vmi(ns, "vm2", status=EXISTING_STATUS)
    await produce(
        broker.bootstrap_servers,
        [full_record(ns, "vm1"), (f"{ns}/bad", b"[]"), full_record(ns, "vm2"), full_record(ns, "gone")],
    )
    config = StatusConfig(
        bootstrap_servers=broker.bootstrap_servers, kube_api=str(kmock.url), group_id=f"status-{unique}"
    )
    task = asyncio.create_task(run_status_sink(config))

    def has_agent_condition(name: str) -> bool:
        return AGENT in kmock.vmi(ns, name).get("status", {}).get("conditions", [])

    async def both_connected() -> bool:
        return has_agent_condition("vm1") and has_agent_condition("vm2")

    async def vm2_cleared() -> bool:
        return not has_agent_condition("vm2")

    try:
        await eventually(both_connected, what="AgentConnected on vm1 and vm2")
        await produce(broker.bootstrap_servers, [(ns, "vm2")])  # vm2 goes away, in a batch of its own
        await eventually(vm2_cleared, what="AgentConnected removed from vm2 by its tombstone")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The tombstone removed our condition; the others' stay, and vm1 keeps its own.
    assert kmock.vmi(ns, "vm2")["status"]["conditions"] == [READY]
    assert has_agent_condition("vm1")
    for request in kmock.patches():
        assert_json_patch_on_main_resource(request, request.name or "", ns)


def test_patch_guards_the_uid_and_skips_an_earlier_vmi_with_the_same_name() -> None:
    record = full_record(NS, "vm1")  # uid-1
    same = {"metadata": {"resourceVersion": "7", "uid": "uid-1"}, "status": {}}
    ops = status_patch(same, record)
    assert ops[:2] == [
        {"op": "test", "path": "/metadata/uid", "value": "uid-1"},
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
    ]
    newer = {"metadata": {"resourceVersion": "7", "uid": "uid-2"}, "status": {}}
    assert status_patch(newer, record) == []


def test_agent_version_not_supported_is_written_and_keeps_its_probe_time() -> None:
    unsupported = VMICondition(
        type="AgentVersionNotSupported", status="True", last_probe_time="2026-11-27T10:00:00Z",
        reason="This guest agent doesn't support required basic commands",
    )
    record = full_record(NS, "vm1")
    record = record.model_copy(
        update={"status": record.status.model_copy(update={"conditions": [*record.status.conditions, unsupported]})}
    )
    earlier = {**unsupported.model_dump(mode="json"), "lastProbeTime": "2026-11-27T09:00:00Z"}
    vmi = {"metadata": {"resourceVersion": "1"}, "status": {"conditions": [READY, earlier]}}
    [*_, conditions] = [op for op in status_patch(vmi, record) if op["path"] == "/status/conditions"]
    assert conditions["value"] == [READY, AGENT, earlier]
    gone = status_patch({"metadata": {"resourceVersion": "2"}, "status": {"conditions": [READY, earlier]}}, None)
    assert gone[-1] == {"op": "replace", "path": "/status/conditions", "value": [READY]}


def test_a_tombstone_names_its_uid_in_a_header() -> None:
    def tombstone(headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
        return ConsumerRecord(VMI_TOPIC, 0, 7, 0, 0, b"ns/vm1", None, None, 0, 0, headers)

    assert decode_message(tombstone([(UID_HEADER, b"uid-1")]), "status") == VMIChange("ns", "vm1", None, "uid-1")
    assert decode_message(tombstone([]), "status") == VMIChange("ns", "vm1", None, "")
