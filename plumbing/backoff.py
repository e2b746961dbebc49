"""Waiting longer after each failure in a row: pauses that double from a first to a most."""

from __future__ import annotations


class Backoff:
    """Pauses that double from `first` up to `most`; `reset` after a success starts them over."""

    def __init__(self, first: float = 0.5, most: float = 30.0) -> None:
        if not 0 < first <= most:
            raise ValueError(f"back-off needs 0 < first <= most, got {first} and {most}")
        self.first = first
        self.most = most
        self.failures = 0

    def next(self) -> float:
        """The pause after one more failure in a row."""
        self.failures += 1
        return min(self.first * 2 ** min(self.failures - 1, 64), self.most)

    def reset(self) -> None:
        """A success: the next failure waits `first` again."""
        self.failures = 0
