"""Dead-letter sink: the original bytes and headers plus the reason, to ``<topic>.dlq``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from worker.errors import StoreUnavailable
from worker.saga.plan import Position

# Header names follow Kafka Connect's dead-letter convention, so existing tooling reads them.
HEADER_PREFIX = "__connect.errors."


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be applied, and why."""

    position: Position
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    reason: str
    detail: str

    def dlq_headers(self) -> list[tuple[str, bytes]]:
        """Original headers followed by the error headers."""
        extra = {
            "reason": self.reason,
            "exception.message": self.detail[:8000],
            "topic": self.position.topic,
            "partition": str(self.position.partition),
            "offset": str(self.position.offset),
        }
        return [*self.headers, *((HEADER_PREFIX + k, v.encode()) for k, v in extra.items())]


@runtime_checkable
class DeadLetterSink(Protocol):
    """Where rejected records go; ``send`` returns only once the record is durable."""

    async def send(self, letter: DeadLetter) -> None:
        """Publish one dead letter, or raise StoreUnavailable."""


class KafkaDeadLetterSink:
    """Publishes to ``<original topic><suffix>`` with acks=all and waits for the ack."""

    def __init__(self, producer: AIOKafkaProducer, suffix: str = ".dlq") -> None:
        self._producer = producer
        self._suffix = suffix

    async def send(self, letter: DeadLetter) -> None:
        """Publish and wait for the broker's acknowledgement."""
        try:
            await self._producer.send_and_wait(
                letter.position.topic + self._suffix,
                value=letter.value,
                key=letter.key,
                headers=letter.dlq_headers(),
            )
        except KafkaError as exc:
            msg = f"dead-letter topic unavailable: {type(exc).__name__}: {exc}"
            raise StoreUnavailable(msg) from exc
