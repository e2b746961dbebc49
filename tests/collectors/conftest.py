"""Fixtures of the collector tests: a qemu-ga that a test can kill and start again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import QemuGA


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
