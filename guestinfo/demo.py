"""The `make run` demo on a machine with no VMs.

The domain side is libvirt's test driver loaded from a node file with one KubeVirt domain,
`default_demo`, whose interfaces carry this machine's own MAC addresses. The guest agent is a real
`qemu-ga` in unix-listen mode, so the API serves this machine's real OS, hostname, filesystems and
interfaces, and the interface merge matches real guest data against the domain.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from pathlib import Path

from guestinfo.domains import kubevirt_domain_xml
from guestinfo.lifecycle import Service
from guestinfo.supervisor import terminate

log = logging.getLogger(__name__)

DEMO_NAMESPACE = "default"
DEMO_NAME = "demo"
SYS_NET = Path("/sys/class/net")


class DemoError(RuntimeError):
    """The demo could not be set up."""


def host_macs(sys_net: Path = SYS_NET, limit: int = 4) -> list[str]:
    """MAC addresses of this machine's interfaces (no loopback, no all-zero), sorted by interface name."""
    macs: list[str] = []
    for device in sorted(sys_net.iterdir()) if sys_net.is_dir() else []:
        try:
            mac = (device / "address").read_text().strip().lower()
        except OSError:
            continue
        if device.name == "lo" or not mac or mac == "00:00:00:00:00:00" or mac in macs:
            continue
        macs.append(mac)
    return macs[:limit]


def demo_node_xml(macs: list[str], uid: str) -> str:
    """A libvirt test-driver node file with the KubeVirt domain `default_demo`."""
    return f"<node>{kubevirt_domain_xml(DEMO_NAMESPACE, DEMO_NAME, uid, macs)}\n</node>\n"


class Demo(Service):
    """Writes the demo node file and runs qemu-ga; `async with Demo(folder) as demo:`."""

    def __init__(self, state_dir: Path):
        self.folder = (state_dir / "demo").absolute()
        self.node_file = self.folder / "node.xml"
        self.agent_socket = self.folder / "qga.sock"
        self._agent: asyncio.subprocess.Process | None = None

    @property
    def libvirt_uri(self) -> str:
        return f"test://{self.node_file}"

    @property
    def vmi_key(self) -> str:
        return f"{DEMO_NAMESPACE}/{DEMO_NAME}"

    def _prepare(self) -> tuple[str, list[str]]:
        """Find qemu-ga and write the node file; returns (qemu-ga path, MACs used)."""
        binary = shutil.which("qemu-ga") or shutil.which("qemu-ga", path="/usr/sbin:/usr/bin")
        if binary is None:
            raise DemoError("qemu-ga is not installed: run `make run` (it installs qemu-guest-agent)")
        self.folder.mkdir(parents=True, exist_ok=True)
        macs = host_macs()
        uid_file = self.folder / "uid"
        if not uid_file.exists():
            uid_file.write_text(str(uuid.uuid4()))
        self.node_file.write_text(demo_node_xml(macs, uid_file.read_text().strip()))
        self.agent_socket.unlink(missing_ok=True)
        return binary, macs

    async def start(self) -> None:
        binary, macs = await asyncio.to_thread(self._prepare)
        self._agent = await asyncio.create_subprocess_exec(
            binary, "-m", "unix-listen", "-p", str(self.agent_socket),
            "-t", str(self.folder), "-f", str(self.folder / "qemu-ga.pid"),
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
        )
        for _ in range(200):
            if await asyncio.to_thread(self.agent_socket.exists):
                break
            if self._agent.returncode is not None:
                raise DemoError(f"qemu-ga exited with code {self._agent.returncode}")
            await asyncio.sleep(0.025)
        else:
            raise DemoError("qemu-ga did not create its socket within 5s")
        log.info(
            "demo: VMI %s on %s with MACs %s; guest agent: qemu-ga (pid %d) on %s",
            self.vmi_key, self.libvirt_uri, ", ".join(macs) or "none", self._agent.pid, self.agent_socket,
        )

    async def stop(self) -> None:
        agent, self._agent = self._agent, None
        if agent is not None:
            await terminate(agent, "demo qemu-ga", grace=5.0)
