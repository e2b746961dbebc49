"""End to end on real parts: `guestinfo run --demo` as a user runs it.

real qemu-ga → collector → Kafka (embedded Tansu, or Apache Kafka) → Faust join → store (SQLite) → REST API, checked
over real HTTP and with kubectl; then SIGTERM must stop the whole process tree.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestinfo.broker import free_port
from tests import tools

pytestmark = pytest.mark.integration

BASE = "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/demo"


def os_release() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value.strip().strip('"')
    return values


def get(port: int, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b"", ""  # not listening yet


def descendants(pid: int) -> set[int]:
    """All processes below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def demo(engine_name: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, set[int]]]:
    """`guestinfo run --demo` on each engine: the embedded Tansu, and a one-node Apache Kafka."""
    port = free_port()
    log_file = (tmp_path / "guestinfo.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "guestinfo", "--state-dir", str(tmp_path / "state"), "run", "--demo",
         "--engine", engine_name, "--api-listen", f"127.0.0.1:{port}", "--interval", "1"],
        stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "guestinfo.log").read_text()[-4000:]
            status, _, _ = get(port, f"{BASE}/guestosinfo")
            if status == 200:
                break
            time.sleep(0.5)
        else:
            pytest.fail("guestosinfo never answered 200:\n" + (tmp_path / "guestinfo.log").read_text()[-4000:])
        tree = descendants(process.pid)
        yield process, port, tree
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log_file.close()


def test_demo_serves_this_machine_and_stops_cleanly(
    demo: tuple[subprocess.Popen[bytes], int, set[int]], tmp_path: Path
) -> None:
    process, port, tree = demo
    status, body, content_type = get(port, f"{BASE}/guestosinfo")
    assert status == 200 and content_type.startswith("application/json")
    info = json.loads(body)
    release = os_release()
    assert info["os"]["name"] == release["NAME"]
    assert info["os"].get("id", "") == release.get("ID", "")
    assert info["os"].get("versionId", "") == release.get("VERSION_ID", "")
    assert info["hostname"] == socket.gethostname()
    assert info["guestAgentVersion"]
    assert any(c["name"] == "guest-get-osinfo" for c in info["supportedCommands"])
    assert info["fsInfo"]["disks"], "this machine has at least one filesystem"
    assert list(json.loads(body)) == sorted(info), "virt-api writes keys sorted"

    status, body, _ = get(port, f"{BASE}/filesystemlist")
    assert status == 200
    filesystems = json.loads(body)
    assert set(filesystems) == {"metadata", "items"} and filesystems["metadata"] == {}
    assert any(fs["mountPoint"] == "/" for fs in filesystems["items"])

    status, body, _ = get(port, f"{BASE}/userlist")
    assert status == 200 and set(json.loads(body)) == {"metadata", "items"}

    missing = "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/nope/guestosinfo"
    status, body, _ = get(port, missing)
    assert status == 404 and json.loads(body)["reason"] == "NotFound"

    kubectl = tools.kubectl()
    home = tmp_path / "home"
    home.mkdir()
    for sub in ("guestosinfo", "userlist", "filesystemlist"):
        # usedBytes moves while the demo runs: kubectl's body must equal a direct read taken just before or after.
        for _attempt in range(5):
            _, before, _ = get(port, f"{BASE}/{sub}")
            out = subprocess.run(
                [kubectl, "--server", f"http://127.0.0.1:{port}", "--cache-dir", str(home / "cache"),
                 "get", "--raw", f"{BASE}/{sub}"],
                capture_output=True, timeout=60, env={**os.environ, "HOME": str(home), "KUBECONFIG": ""},
            )
            assert out.returncode == 0, out.stderr.decode()
            _, after, _ = get(port, f"{BASE}/{sub}")
            if out.stdout.strip() in (before.strip(), after.strip()):
                break
        else:
            pytest.fail(f"kubectl get --raw {sub} never printed the API's body: {out.stdout[:500]!r}")

    # Every stage says what it did in its metrics; `run` prints where they are.
    log_text = (tmp_path / "guestinfo.log").read_text()
    announced = {role: url for url, role in re.findall(r"(http://\S+/metrics) \((\w+)\)", log_text)}
    assert set(announced) == {"serve", "collect", "join"}
    for role, series in (("join", "guestinfo_join_events_total{topic=\"guestinfo.agent.v1\"}"),
                         ("collect", "guestinfo_collector_reports_published_total"),
                         ("serve", "guestinfo_")):
        with urllib.request.urlopen(announced[role], timeout=5) as response:
            assert series in response.read().decode(), f"{role} metrics lack {series}"

    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert tree, "run started child processes"
    leftovers = [pid for pid in tree if alive(pid)]
    assert not leftovers, f"processes left running after SIGTERM: {leftovers}"
