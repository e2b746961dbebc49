"""Fixtures of the collector tests: a qemu-ga that a test can kill and start again."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class QemuGA:
    """A real qemu-ga in unix-listen mode on a fixed socket path, restartable."""

    def __init__(self, state: Path) -> None:
        self.binary = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
        self.state = state
        self.socket = state / "qga.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not Path(self.binary).exists():
            pytest.fail("qemu-ga is not installed (Debian package qemu-guest-agent; `make setup` installs it)")
        self.socket.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [self.binary, "-m", "unix-listen", "-p", str(self.socket), "-t", str(self.state),
             "-f", str(self.state / "pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._proc = proc
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("qemu-ga did not create its socket")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def restartable_qemu_ga(tmp_path: Path) -> Iterator[QemuGA]:
    state = tmp_path / "qga-restartable"
    state.mkdir()
    agent = QemuGA(state)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
