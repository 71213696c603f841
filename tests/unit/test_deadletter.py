"""The dead-letter sink: every letter can be sent, whatever its size; only an outage is retried."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from worker.deadletter import (
    KEY_PREFIX_BYTES,
    ORIGINAL_KEY_SIZE_HEADER,
    ORIGINAL_SIZE_HEADER,
    PREFIX_BYTES,
    TRUNCATED_HEADER,
    DeadLetter,
    KafkaDeadLetterSink,
)
from worker.errors import StoreUnavailable
from worker.ports import Position


class FakeProducer:
    """Refuses records above ``limit`` bytes (key, value, headers) as the broker does, or fails as if it were down."""

    def __init__(self, limit: int = 10**9, *, down: bool = False) -> None:
        self.limit = limit
        self.down = down
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, value: bytes | None, key: bytes | None, headers: list[Any]) -> None:
        """Keep what fits."""
        if self.down:
            raise KafkaConnectionError("broker down")
        if len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers) > self.limit:
            raise MessageSizeTooLargeError("The message is too large")
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": dict(headers)})


def _letter(size: int) -> DeadLetter:
    return DeadLetter(Position("ast-graphs", 0, 7), b"k", b"x" * size, (("trace", b"1"),), "oversized", "too big")


async def test_a_letter_that_fits_is_sent_whole() -> None:
    """Value, key, original headers and the error headers, unchanged."""
    producer = FakeProducer()
    await KafkaDeadLetterSink(producer, max_bytes=1 << 20).send(_letter(1000))  # type: ignore[arg-type]
    (sent,) = producer.sent
    assert (sent["topic"], sent["value"], sent["headers"]["trace"]) == ("ast-graphs.dlq", b"x" * 1000, b"1")
    assert TRUNCATED_HEADER not in sent["headers"]


async def test_a_letter_beyond_the_request_size_is_sent_as_a_prefix_saying_so() -> None:
    """An oversized original goes as its first 64 KiB, with the original size in a header, never as an outage."""
    producer = FakeProducer()
    await KafkaDeadLetterSink(producer, max_bytes=100_000).send(_letter(5_000_000))  # type: ignore[arg-type]
    (sent,) = producer.sent
    assert sent["value"] == b"x" * PREFIX_BYTES
    assert sent["headers"][TRUNCATED_HEADER] == b"true"
    assert sent["headers"][ORIGINAL_SIZE_HEADER] == b"5000000"
    assert sent["headers"]["__connect.errors.reason"] == b"oversized"


async def test_a_broker_refusing_the_size_gets_smaller_letters_down_to_none() -> None:
    """A topic whose max.message.bytes is tiny still gets the letter: without its value, with its reason."""
    producer = FakeProducer(limit=2000)  # the error headers fit, the value does not
    await KafkaDeadLetterSink(producer, max_bytes=1 << 20).send(_letter(100_000))  # type: ignore[arg-type]
    (sent,) = producer.sent
    assert sent["value"] is None
    assert sent["headers"][ORIGINAL_SIZE_HEADER] == b"100000"
    assert sent["headers"]["__connect.errors.offset"] == b"7"
    assert "trace" not in sent["headers"]


async def test_a_huge_key_and_headers_still_leave_a_letter_that_can_be_sent() -> None:
    """Key and headers count too: the smallest letter keeps 1 KiB of the key, no headers, and the sizes."""
    letter = DeadLetter(
        Position("ast-graphs", 0, 7), b"k" * 2_000_000, b"x" * 10, (("h", b"v" * 2_000_000),), "oversized", "big key"
    )
    producer = FakeProducer(limit=1 << 20)
    await KafkaDeadLetterSink(producer, max_bytes=1 << 20).send(letter)  # type: ignore[arg-type]
    (sent,) = producer.sent
    assert sent["key"] == b"k" * KEY_PREFIX_BYTES
    assert sent["value"] is None
    assert "h" not in sent["headers"]
    assert sent["headers"][ORIGINAL_KEY_SIZE_HEADER] == b"2000000"
    assert sent["headers"][ORIGINAL_SIZE_HEADER] == b"10"
    assert sent["headers"]["__connect.errors.reason"] == b"oversized"


def test_a_prefix_the_reader_kept_is_marked_with_the_original_size() -> None:
    """A value the reader cut (a Refused prefix) goes to its letter marked as truncated, with the whole size."""
    from worker.consume.intake import dead_letter
    from worker.consume.record_batches import Refused
    from worker.errors import EventError

    class Record:
        topic, partition, offset, timestamp = "ast-graphs", 0, 7, 0
        key, headers = b"k", [("h", None)]
        value = Refused(b"x" * 10, "oversized", "too big", 500)

    letter = dead_letter(Record(), Position("ast-graphs", 0, 7), EventError("oversized", "too big"))
    headers = dict(letter.dlq_headers())
    assert (headers[TRUNCATED_HEADER], headers[ORIGINAL_SIZE_HEADER]) == (b"true", b"500")
    assert letter.headers == (("h", b""),)
    assert letter.value == b"x" * 10


async def test_a_broker_outage_is_an_outage() -> None:
    """Unreachable broker: StoreUnavailable, so the batch is retried and nothing is committed past it."""
    with pytest.raises(StoreUnavailable):
        await KafkaDeadLetterSink(FakeProducer(down=True)).send(_letter(10))  # type: ignore[arg-type]


def test_a_records_own_error_headers_are_renamed_and_the_workers_win() -> None:
    """A record cannot forge its letter's origin or reason: its __connect.errors.* headers are kept renamed."""
    from worker.ops.dlq import Letter, original_headers

    forged = (("__connect.errors.topic", b"victim"), ("__connect.errors.reason", b"store-rejected"), ("trace", b"1"))
    letter = DeadLetter(Position("ast-graphs", 0, 7), b"k", b"{}", forged, "invalid", "bad", "worker.errors.EventError")
    headers = letter.dlq_headers()
    assert ("gpm.original.__connect.errors.topic", b"victim") in headers
    assert [v for k, v in headers if k == "__connect.errors.topic"] == [b"ast-graphs"]
    assert ("__connect.errors.exception.class.name", b"worker.errors.EventError") in headers
    read = Letter("ast-graphs.dlq", 0, 0, 0, b"k", b"{}", tuple(headers))
    assert (read.error("topic"), read.error("reason")) == ("ast-graphs", "invalid")
    # Re-driven, the record gets its own headers back, never the forged error headers.
    assert original_headers(read) == [("trace", b"1")]


@pytest.mark.parametrize(
    ("dlq_topic", "origin"),
    [("ast-graphs.dlq", "victim"), ("victim.dlq", "victim"), ("ast-graphs.dlq", ""), ("other.dlq", "other")],
)
def test_redrive_goes_only_to_a_consumed_topic_matching_the_letters_dead_letter_topic(
    dlq_topic: str, origin: str
) -> None:
    """A letter naming a topic the worker does not consume, or not its DLQ's source, is refused."""
    from worker.config import KafkaSettings
    from worker.errors import OperationRefused
    from worker.ops.dlq import Letter, redrive_target

    headers = (("__connect.errors.topic", origin.encode()),)
    with pytest.raises(OperationRefused):
        redrive_target(KafkaSettings(), Letter(dlq_topic, 0, 0, 0, None, b"{}", headers))
    assert (
        redrive_target(
            KafkaSettings(),
            Letter("ast-graphs.dlq", 0, 0, 0, None, b"{}", (("__connect.errors.topic", b"ast-graphs"),)),
        )
        == "ast-graphs"
    )
