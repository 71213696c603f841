"""Dead-letter sink: the original bytes and headers plus the reason, to ``<topic>.dlq``.

Every dead letter can be sent. One too large for the producer or the topic (the record
was refused as oversized, say) goes as a bounded prefix of its value, with headers that
say so and give the original size; failing that, with the reason and no value at all. A
size refusal is never retried as an outage: it would stall the partition for ever.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError

from worker.errors import Halted, StoreUnavailable
from worker.ports import Position

log = structlog.get_logger(__name__)

# Header names follow Kafka Connect's dead-letter convention, so existing tooling reads them.
HEADER_PREFIX = "__connect.errors."
# A record's own error headers are renamed under this prefix in its letter: only the worker
# writes __connect.errors.*, so a record cannot forge its origin, reason or message for the
# DLQ tools (or make redrive publish elsewhere). gpm.* headers (gpm.redriven-from) pass.
ORIGINAL_PREFIX = "gpm.original."
# Set on a letter whose value is not the whole original: "true", and the original's size.
TRUNCATED_HEADER = "gpm.value.truncated"
ORIGINAL_SIZE_HEADER = "gpm.value.original-bytes"
# Set on a letter whose key is not the whole original: the original key's size.
ORIGINAL_KEY_SIZE_HEADER = "gpm.key.original-bytes"
# What a truncated letter keeps of the value: enough to see what the record was.
PREFIX_BYTES = 64 * 1024
# What the smallest letter keeps of a key.
KEY_PREFIX_BYTES = 1024
# Room left for the record's framing, key and headers within the producer's request size.
_OVERHEAD = 16 * 1024
_SIZE_ERRORS = (MessageSizeTooLargeError, RecordTooLargeError)
# The end of a traceback is where it failed: that much is kept in the letter.
_STACK_CHARS = 4000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be applied, and why."""

    position: Position
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    reason: str
    detail: str
    # The exception behind the reason, as Kafka Connect names it (module.Class), if any,
    # and the innermost frames of its traceback (exception.stacktrace).
    exception_class: str = ""
    stack: str = ""
    # Headers the worker adds beyond the error headers (a shortened letter's marks).
    marks: tuple[tuple[str, bytes], ...] = ()

    def dlq_headers(self) -> list[tuple[str, bytes]]:
        """Original headers (their error headers renamed), the worker's error headers, the marks."""
        extra = {
            "reason": self.reason,
            "exception.message": self.detail[:8000],
            "topic": self.position.topic,
            "partition": str(self.position.partition),
            "offset": str(self.position.offset),
        }
        if self.exception_class:
            extra["exception.class.name"] = self.exception_class
        if self.stack:
            extra["exception.stacktrace"] = self.stack[-_STACK_CHARS:]
        originals = [(ORIGINAL_PREFIX + k if k.startswith(HEADER_PREFIX) else k, v) for k, v in self.headers]
        return [*originals, *((HEADER_PREFIX + k, v.encode()) for k, v in extra.items()), *self.marks]

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what the record costs the broker, before framing."""
        headers = sum(len(k) + len(v) for k, v in self.dlq_headers())
        return len(self.key or b"") + len(self.value or b"") + headers

    def truncated(self, original_bytes: int) -> DeadLetter:
        """The letter, marked as carrying a prefix of a value of ``original_bytes``."""
        marks = {**dict(self.marks), TRUNCATED_HEADER: b"true", ORIGINAL_SIZE_HEADER: str(original_bytes).encode()}
        return dataclasses.replace(self, marks=tuple(marks.items()))

    def shrunk(self, keep: int | None) -> DeadLetter:
        """A copy with only ``keep`` bytes of the value, saying so.

        ``keep=None``: the smallest letter: no value, none of the record's headers, and at
        most :data:`KEY_PREFIX_BYTES` of its key; with the position and the reason, it fits.
        """
        marked = self if TRUNCATED_HEADER in dict(self.marks) else self.truncated(len(self.value or b""))
        if keep is not None:
            return dataclasses.replace(marked, value=(self.value or b"")[:keep])
        key, marks = self.key, dict(marked.marks)
        if key is not None and len(key) > KEY_PREFIX_BYTES:
            key, marks[ORIGINAL_KEY_SIZE_HEADER] = key[:KEY_PREFIX_BYTES], str(len(key)).encode()
        return dataclasses.replace(
            marked, key=key, value=None, headers=(), detail=self.detail[:2000], marks=tuple(marks.items())
        )


def class_name(exc: BaseException) -> str:
    """``module.Class`` of an exception, for the ``exception.class.name`` header."""
    kind = type(exc)
    return f"{kind.__module__}.{kind.__qualname__}"


def stack_of(exc: BaseException) -> str:
    """The exception's traceback as text (its cause's included), for ``exception.stacktrace``."""
    return "".join(traceback.format_exception(exc)).strip()


def sendable_forms(letter: DeadLetter, max_bytes: int) -> Iterator[DeadLetter]:
    """The letter as it is if it fits, then a prefix of its value, then no value: each smaller than the last."""
    if letter.size + _OVERHEAD <= max_bytes:
        yield letter
    if len(letter.value or b"") > PREFIX_BYTES:
        yield letter.shrunk(PREFIX_BYTES)
    yield letter.shrunk(None)


@runtime_checkable
class DeadLetterSink(Protocol):
    """Where rejected records go; ``send`` returns only once the record is durable."""

    async def send(self, letter: DeadLetter) -> None:
        """Publish one dead letter, or raise StoreUnavailable."""


class KafkaDeadLetterSink:
    """Publishes to ``<original topic><suffix>`` with acks=all and waits for the ack.

    ``max_bytes`` is the producer's ``max_request_size``: a letter beyond it is shrunk
    before it is sent, and one the broker refuses as too large is shrunk and sent again.
    """

    def __init__(self, producer: AIOKafkaProducer, suffix: str = ".dlq", max_bytes: int = 1024 * 1024) -> None:
        self._producer = producer
        self._suffix = suffix
        self._max_bytes = max_bytes

    async def send(self, letter: DeadLetter) -> None:
        """Publish and wait for the broker's acknowledgement; StoreUnavailable only for a broker outage."""
        topic = letter.position.topic + self._suffix
        refused: KafkaError | None = None
        for form in sendable_forms(letter, self._max_bytes):
            if form is not letter:
                log.warning(
                    "dead letter too large; sending it shortened",
                    topic=topic,
                    original_bytes=len(letter.value or b""),
                    kept_bytes=len(form.value or b""),
                    refused=str(refused) if refused else None,
                )
            try:
                await self._producer.send_and_wait(topic, value=form.value, key=form.key, headers=form.dlq_headers())
            except _SIZE_ERRORS as exc:
                refused = exc
                continue
            except KafkaError as exc:
                msg = f"dead-letter topic unavailable: {type(exc).__name__}: {exc}"
                raise StoreUnavailable(msg) from exc
            return
        msg = f"dead-letter topic {topic} refuses even a letter without a value: {refused}"
        raise StoreUnavailable(msg) from refused


class HaltingDeadLetterSink:
    """``GPM_WORKER__ERRORS_TOLERANCE=none`` (Kafka Connect's errors.tolerance): refuse to dead-letter.

    A record that would be dead-lettered stops the worker with the record's position and
    reason instead; its offset is not committed, so after a fix (or with tolerance 'all')
    it is read again. For teams that prefer a halted pipeline to a dead-letter queue.
    """

    async def send(self, letter: DeadLetter) -> None:
        """Raise Halted, naming the record and why it could not be applied."""
        position = letter.position
        msg = (
            f"{position.topic}:{position.partition}:{position.offset} would be dead-lettered "
            f"({letter.reason}: {letter.detail[:500]}); GPM_WORKER__ERRORS_TOLERANCE=none stops the worker instead"
        )
        raise Halted(msg)
