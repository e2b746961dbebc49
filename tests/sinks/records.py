"""Sample merged records for the sinks tests."""

from __future__ import annotations

from schemas.events import VMIRef
from schemas.kubevirt import (
    FileSystem,
    FileSystemDisk,
    FileSystemInfo,
    GuestAgentCommandInfo,
    GuestAgentInfo,
    GuestOSInfo,
    GuestOSUser,
    NetworkInterface,
    VMICondition,
)
from schemas.vmi import VMIRecord, VMIStatusFields

OS = GuestOSInfo(
    name="Fedora Linux",
    kernel_release="6.8.5",
    version="40 (Cloud Edition)",
    pretty_name="Fedora Linux 40 (Cloud Edition)",
    version_id="40",
    machine="x86_64",
    id="fedora",
)
ROOT_FS = FileSystem(
    disk_name="vda4",
    mount_point="/",
    file_system_type="btrfs",
    used_bytes=2100000000,
    total_bytes=5300000000,
    disk=[FileSystemDisk(serial="abc123", bus_type="virtio")],
)
FEDORA = GuestOSUser(user_name="fedora", login_time=1718000000.123)
PROBE_TIME = "2026-11-27T10:00:00Z"


def full_record(namespace: str, name: str, revision: int = 1, agent_connected: bool = True) -> VMIRecord:
    """A record with every field set (the `*-full.json` golden bodies)."""
    return VMIRecord(
        vmi=VMIRef(namespace=namespace, name=name, uid="uid-1"),
        node="node-a",
        revision=revision,
        observed_at=1764237600.0,
        agent_connected=agent_connected,
        status=VMIStatusFields(
            guest_os_info=OS,
            interfaces=[
                NetworkInterface(
                    name="default",
                    mac="52:54:00:aa:bb:cc",
                    ip_address="10.0.2.2",
                    ip_addresses=["10.0.2.2", "fd10::2"],
                    interface_name="eth0",
                    info_source="domain, guest-agent",
                    queue_count=1,
                    link_state="up",
                )
            ],
            conditions=(
                [VMICondition(type="AgentConnected", status="True", last_probe_time=PROBE_TIME)]
                if agent_connected
                else []
            ),
        ),
        guest_agent_info=GuestAgentInfo(
            guest_agent_version="8.2.0",
            supported_commands=[
                GuestAgentCommandInfo(name="guest-info", enabled=True),
                GuestAgentCommandInfo(name="guest-exec"),
            ],
            hostname="web<1>",
            os=OS,
            timezone="UTC, 0",
            user_list=[FEDORA],
            fs_info=FileSystemInfo(disks=[ROOT_FS]),
            fs_freeze_status="thawed",
        ),
        users=[
            FEDORA,
            GuestOSUser(user_name="admin", domain="CORP", login_time=1718000001.0),
            GuestOSUser(user_name="nobody"),
        ],
        filesystems=[
            ROOT_FS,
            FileSystem(disk_name="vdb", mount_point="/data", file_system_type="xfs"),
            FileSystem(disk_name="sr0", mount_point="/mnt", file_system_type="iso9660", disk=[FileSystemDisk()]),
        ],
    )


def empty_record(namespace: str, name: str, revision: int = 1) -> VMIRecord:
    """A connected agent that answered nothing yet (the `*-empty.json` golden bodies)."""
    return VMIRecord(
        vmi=VMIRef(namespace=namespace, name=name),
        node="node-a",
        revision=revision,
        observed_at=1764237600.0,
        agent_connected=True,
        status=VMIStatusFields(),
        guest_agent_info=GuestAgentInfo(),
    )
