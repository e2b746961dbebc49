"""Dead letters on `guestinfo.deadletter.v1`: raw events the join could not apply, keyed as they were.

Each names where the event was (topic, partition, offset), why it was refused, and its value (UTF-8,
cut at `MAX_DEAD_LETTER_VALUE` characters; null when the event had none).
"""

from __future__ import annotations

from typing import Final

from pydantic import Field

from schemas.events import EventModel

#: The longest value kept in a dead letter, in characters.
MAX_DEAD_LETTER_VALUE: Final = 65536


class DeadLetter(EventModel):
    topic: str = Field(max_length=249)
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    reason: str
    value: str | None = Field(max_length=MAX_DEAD_LETTER_VALUE)
