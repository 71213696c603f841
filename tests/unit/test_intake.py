"""A Kafka record's fields as input: a refusal, a tombstone or the decoded event, never an exception."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from worker.consume.intake import headers_of, inbound, source_named, value_to_decode
from worker.consume.record_batches import Refused
from worker.errors import EventError
from worker.events import Tombstone


@dataclass
class Record:
    """The fields of aiokafka's ConsumerRecord that intake reads."""

    value: bytes | None
    key: bytes | None = b"a.py"
    topic: str = "ast-graphs"
    partition: int = 0
    offset: int = 7
    timestamp: int = 1_764_583_200_000
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)


DECODED = EventError("not-json", "as the decoder said")


@pytest.mark.parametrize("timestamp", [-(2**63), -62135596800001, 253402300800000, 2**63 - 1])
def test_a_tombstone_with_a_timestamp_no_date_can_hold_is_refused_not_raised(timestamp: int) -> None:
    """CreateTime is the producer's: past year 9999 or before year 1, the tombstone is dead-lettered with why."""
    outcome = inbound(Record(None, timestamp=timestamp), DECODED)
    assert isinstance(outcome, EventError)
    assert (outcome.reason, "outside the years 1 to 9999" in outcome.detail) == ("invalid", True)


@pytest.mark.parametrize("timestamp", [-1, 0, 1_764_583_200_000])
def test_a_tombstone_with_any_datable_timestamp_deletes(timestamp: int) -> None:
    """-1 (no timestamp) included."""
    assert isinstance(inbound(Record(None, timestamp=timestamp), DECODED), Tombstone)


def test_a_refused_value_is_never_decoded_and_is_its_own_reason() -> None:
    """What the reader refused goes to the dead-letter topic with the reader's reason; the decoder gets nothing."""
    record = Record(Refused(b"prefix", "oversized", "20000000 bytes exceeds the limit", 20_000_000))
    assert value_to_decode(record) == b""
    outcome = inbound(record, DECODED)
    assert isinstance(outcome, EventError)
    assert (outcome.reason, outcome.detail) == ("oversized", "20000000 bytes exceeds the limit")
    assert source_named(record) is None


def test_only_a_key_a_source_id_can_be_names_a_source() -> None:
    """A key with a NUL, a control character, invalid UTF-8 or past 512 characters names none.

    One such key in a fetch made the fetch's digest query fail, so all of it was validated in full.
    """
    for key in (b"a\x00b", b"a\nb", b"\xff", b"x" * 513, b""):
        assert source_named(Record(b"{}", key=key)) is None
    assert source_named(Record(b"{}", key=b"pkg/a.py")) == "pkg/a.py"
    assert source_named(Record(b"{}", key=b"pkg/a.py", topic="intent-links")) is None


def test_null_header_values_are_empty_bytes() -> None:
    """Header values may be null on the wire: letters and trace links read b""."""
    assert headers_of(Record(b"{}", headers=[("a", None), ("b", b"x")])) == (("a", b""), ("b", b"x"))
