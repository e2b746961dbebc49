"""`guestinfo.broker.free_port`: a free port that no outgoing connection can take before a stage binds it
again (the kernel takes those from its ephemeral range)."""

from __future__ import annotations

import socket

import pytest

from guestinfo import broker
from guestinfo.broker import EPHEMERAL_RANGE, free_port


def test_a_free_port_is_below_the_ephemeral_range_and_binds() -> None:
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < low for port in ports)
    assert len(ports) > 1, "picked at random: two stages asking at once rarely meet"
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        draws = iter([taken, taken, taken + 1 if taken + 1 < 32768 else taken - 1])
        monkeypatch.setattr(broker.random, "randrange", lambda low, high: next(draws))
        assert free_port() != taken, "a drawn port that is in use is passed over"
