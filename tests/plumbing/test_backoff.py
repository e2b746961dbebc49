"""`plumbing.backoff.Backoff`: doubling pauses, capped, started over by a success."""

from __future__ import annotations

import pytest

from plumbing.backoff import Backoff


@pytest.mark.parametrize(("first", "most", "pauses"), [
    (0.5, 30.0, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),
    (0.1, 10.0, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0]),
    (1.0, 1.0, [1.0, 1.0, 1.0]),
])
def test_pauses_double_up_to_the_most(first: float, most: float, pauses: list[float]) -> None:
    backoff = Backoff(first, most)
    assert [backoff.next() for _ in pauses] == pytest.approx(pauses)
    assert backoff.failures == len(pauses)


def test_a_success_starts_over_and_long_outages_stay_capped() -> None:
    backoff = Backoff(0.5, 30.0)
    for _ in range(10_000):  # no overflow however long the outage
        assert backoff.next() <= 30.0
    backoff.reset()
    assert (backoff.failures, backoff.next()) == (0, 0.5)


@pytest.mark.parametrize(("first", "most"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_nonsense_bounds_are_refused(first: float, most: float) -> None:
    with pytest.raises(ValueError, match="back-off needs"):
        Backoff(first, most)
