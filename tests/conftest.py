"""Shared fixtures: real components, started per session or per test."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestinfo.broker import EmbeddedBroker

POSTGRES_URL = os.environ.get("GUESTINFO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One real Tansu broker for the test session (topics are named per test)."""
    embedded = EmbeddedBroker()
    asyncio.run(embedded.start())
    try:
        yield embedded
    finally:
        asyncio.run(embedded.stop())


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic names, group ids and VMI names."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def qemu_ga(tmp_path: Path) -> Iterator[Path]:
    """A real qemu-ga in unix-listen mode; yields its socket path."""
    binary = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
    if not Path(binary).exists():
        pytest.fail("qemu-ga is not installed (Debian package qemu-guest-agent; `make setup` installs it)")
    state = tmp_path / "qga"
    state.mkdir()
    sock = state / "qga.sock"
    proc = subprocess.Popen(
        [binary, "-m", "unix-listen", "-p", str(sock), "-t", str(state), "-f", str(state / "pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("qemu-ga did not create its socket")
        time.sleep(0.02)
    try:
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server of the project's machines; these tests fail, never skip, without it."""
    return POSTGRES_URL
