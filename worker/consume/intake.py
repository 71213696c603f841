"""One place that turns a Kafka record into the event to apply or the reason it cannot be.

Every field of a record is input. The reader (``record_batches``) has bounded the key,
the headers and the value and marked what it refused; here a refusal, a tombstone (its
key and its timestamp, any int64), and the decoded value become an ``Event`` or an
``EventError``, and nothing a record holds raises past this module.
"""

from __future__ import annotations

from typing import Any

from worker.consume.record_batches import Refused
from worker.deadletter import DeadLetter, class_name
from worker.errors import EventError
from worker.events import Event, is_source_id, tombstone
from worker.ports import Position

# Tombstones delete sources; on the intent topics (intent-links, intent-links-<name>) they are refused.
INTENT_TOPIC_PREFIX = "intent-links"

Record = Any  # aiokafka's ConsumerRecord[bytes, bytes]: untyped


def value_to_decode(record: Record) -> bytes | None:
    """What the decoder is given: nothing of a refused value (it is never copied or parsed)."""
    value: bytes | None = record.value
    return b"" if isinstance(value, Refused) else value


def source_named(record: Record) -> str | None:
    """The source a graph record's key names (the producers' convention), or None if it names none."""
    key = record.key
    if key is None or record.value is None or isinstance(record.value, Refused):
        return None
    if record.topic.startswith(INTENT_TOPIC_PREFIX):
        return None
    try:
        source: str = key.decode()
    except UnicodeDecodeError:
        return None
    # A key no event can have as its source id names none (and PostgreSQL refuses a NUL in text).
    return source if is_source_id(source) else None


def headers_of(record: Record) -> tuple[tuple[str, bytes], ...]:
    """The record's headers as (name, value) with a value always bytes (a null one as b"")."""
    return tuple((str(name), value if isinstance(value, bytes) else b"") for name, value in record.headers or ())


def inbound(record: Record, decoded: Event | EventError) -> Event | EventError:
    """The record's event: refused by the reader, a tombstone, or what decoding its value gave."""
    value = record.value
    if isinstance(value, Refused):
        return EventError(value.reason, value.detail)
    if value is None and not record.topic.startswith(INTENT_TOPIC_PREFIX):
        # A tombstone: the source its key names is deleted (compacted topics' convention).
        try:
            return tombstone(record.key, record.topic, record.partition, record.offset, record.timestamp)
        except EventError as refused:
            return refused
    return decoded


def dead_letter(record: Record, position: Position, refused: EventError) -> DeadLetter:
    """The letter for a record that cannot be applied: what the reader kept of it, marked if that is not all."""
    letter = DeadLetter(
        position,
        record.key,
        record.value,
        headers_of(record),
        refused.reason,
        refused.detail,
        class_name(refused),
    )
    value = record.value
    if isinstance(value, Refused) and value.original_bytes > len(value):
        return letter.truncated(value.original_bytes)
    return letter
