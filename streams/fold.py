"""One VMI's raw events of a batch folded into its new state, at most one output and the change events of
each revision it made (pure, no I/O).

Decode, apply, encode: the stored state is decoded once per batch, every event of the VMI is applied
in order (`streams.join`), and the new state is encoded once. A bad event is refused with a reason for
the dead-letter topic, never raised: the VMI's other events go on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import msgspec
import orjson
from msgspec.structs import replace
from prometheus_client import Counter

from schemas.codec import DecodeError
from schemas.dead_letters import MAX_DEAD_LETTER_VALUE
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC, UID_HEADER
from streams.join import STATES, JoinResult, VMIState, apply_agent, apply_domain, encode_state, observed_at
from streams.metrics import EVENTS
from streams.output import Send
from streams.reports import AGENT_REPORTS, DOMAIN_REPORTS
from streams.vmi_events import changes, remembered

T = TypeVar("T")

log = logging.getLogger(__name__)

#: The largest raw event, record or state (as large as the collector publishes).
MAX_RECORD_BYTES = 8 * 1024 * 1024


class RawMessage(Protocol):
    """What the fold reads of a consumer record (Faust's and aiokafka's both have these)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """A raw event the join cannot apply: `kind` for the metric, `reason` for the dead-letter topic."""

    message: RawMessage
    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class FoldedBatch:
    """The outcome of one VMI's events of a batch: its new encoded state, the one output to send (the
    last; records carry revisions and the merged topic is compacted, so a batch coalesces them), and
    the events refused."""

    #: None when no event applied (all refused): nothing to write.
    state: bytes | None
    output: JoinResult | None
    refused: list[Refusal]
    #: The change events of every revision the batch made, in order (`streams.vmi_events`), as JSON.
    events: list[bytes] = field(default_factory=list)


def fold_batch(stored: bytes | None, key: bytes, messages: Sequence[RawMessage]) -> FoldedBatch:
    """Apply one VMI's events of a batch, in order, to its stored state."""
    state = load_state(stored)
    output: JoinResult | None = None
    refused: list[Refusal] = []
    events: list[bytes] = []
    for message in messages:
        _events_of(message.topic).inc()
        try:
            result = apply_event(state, message.topic, message.value, key)
        except DecodeError as exc:
            refused.append(Refusal(message, "undecodable", str(exc)))
            continue
        except Exception as exc:  # a bug on one event must not stop the stream for every VMI
            log.debug("join failed on %s[%d]@%d", message.topic, message.partition, message.offset, exc_info=True)
            refused.append(Refusal(message, "internal", f"internal error: {type(exc).__name__}: {exc}"))
            continue
        revised = result.record is not None and result.state.revision > state.revision
        if revised:
            events += map(orjson.dumps, changes(state, result.state, observed_at(result.state)))
        state = remembered(state, result.state) if revised or result.tombstone else result.state
        if result.record is not None or result.tombstone:
            output = result
    if len(refused) == len(messages):
        return FoldedBatch(None, None, refused)
    return FoldedBatch(encode_state(state), output, refused, events)


#: The events counter of each raw topic (a label lookup per event costs as much as a report's decode).
_EVENTS_BY_TOPIC = {topic: EVENTS.labels(topic) for topic in (DOMAIN_TOPIC, AGENT_TOPIC)}


def _events_of(topic: str) -> Counter:
    return _EVENTS_BY_TOPIC.get(topic) or EVENTS.labels(topic)


def fold(stored: bytes | None, topic: str, value: bytes | None) -> JoinResult:
    """Apply one raw event to a VMI's stored (encoded) state."""
    return apply_event(load_state(stored), topic, value)


def apply_event(state: VMIState, topic: str, value: bytes | None, key: bytes | None = None) -> JoinResult:
    """Apply one raw event to a VMI's state; with `key`, the report must be of that VMI."""
    if value is None:
        raise DecodeError("raw event without a value")
    if len(value) > MAX_RECORD_BYTES:
        raise DecodeError(f"raw event of {len(value)} bytes is over the {MAX_RECORD_BYTES} byte limit")
    if topic == DOMAIN_TOPIC:
        domain = decoded(DOMAIN_REPORTS, value)
        _check_key(key, domain.vmi.key)
        return apply_domain(state, domain)
    if topic == AGENT_TOPIC:
        agent = decoded(AGENT_REPORTS, value)
        _check_key(key, agent.vmi.key)
        return apply_agent(state, agent)
    raise DecodeError(f"unexpected topic {topic}")


def decoded(decoder: msgspec.json.Decoder[T], value: bytes) -> T:
    """`value` decoded and validated; any failure is a `DecodeError` with the reason."""
    try:
        return decoder.decode(value)
    except RecursionError as exc:  # msgspec's own nesting limit (about 1,000 levels), even in ignored keys
        raise DecodeError("not JSON this join reads: nested too deep") from exc
    except msgspec.ValidationError as exc:
        raise DecodeError(f"invalid {getattr(decoder.type, '__name__', decoder.type)}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from exc


def _check_key(key: bytes | None, vmi: str) -> None:
    if key is not None and key != vmi.encode():
        raise DecodeError(f"key {key[:300]!r} is not the report's VMI {vmi!r}")


def load_state(stored: bytes | None) -> VMIState:
    """A VMI's stored state; one that no longer decodes is replaced by a fresh state (and logged),
    so that the VMI is rebuilt from its next events instead of being stuck."""
    if stored is None:
        return VMIState()
    try:
        return decoded(STATES, stored)
    except DecodeError as exc:
        log.error("stored join state does not decode, starting it afresh: %s", exc)
        return VMIState()


def trimmed_state(encoded: bytes) -> bytes:
    """A state without the agent's answers, held ones and a migration target's report: what must
    survive a restart (revision, digest, domain, removal marker, ended uids) in a fraction of the bytes."""
    state = load_state(encoded)
    observed = {key: at for key, at in state.observed.items() if key == "domain"}
    return encode_state(replace(state, agent=None, pending=None, incoming=None, known=None, observed=observed))


def output_send(topic: str, key: bytes, output: JoinResult) -> Send:
    """The merged record, or the tombstone with the removed VMI's uid in `UID_HEADER`."""
    if output.record is not None or not output.state.removed_uid:
        return Send(topic, key, output.record)
    return Send(topic, key, None, ((UID_HEADER, output.state.removed_uid.encode()),))


def dead_letter(topic: str, refusal: Refusal) -> Send:
    """The refused raw event on the dead-letter topic (`schemas.dead_letters.DeadLetter`): where it was,
    why, and its value (cut at `MAX_DEAD_LETTER_VALUE` characters)."""
    message = refusal.message
    value = message.value
    body = orjson.dumps({
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "reason": refusal.reason,
        "value": value.decode("utf-8", errors="replace")[:MAX_DEAD_LETTER_VALUE] if value is not None else None,
    })
    return Send(topic, message.key or b"", body)
