"""Publish events to the broker as producers do: JSON value, key = source id, acks=all."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaProducer
from opentelemetry import propagate, trace

from worker.broker import explained, start_producer
from worker.config import KafkaSettings
from worker.events import Envelope, encode_event

tracer = trace.get_tracer("graph_postgres_manager.publish")


async def publish_events(
    kafka: KafkaSettings,
    topic: str,
    events: Iterable[Envelope],
    on_sent: Callable[[Envelope], None] | None = None,
) -> int:
    """Send every event, wait for all acknowledgements, return how many were sent."""
    producer = AIOKafkaProducer(
        **kafka.client_options(),
        acks="all",
        compression_type="gzip",
        max_request_size=16 * 1024 * 1024,
        linger_ms=5,
    )
    await start_producer(producer, kafka)
    sent = 0
    try:
        pending = []
        for event in events:
            # One producer span per event, its context in the record's headers (W3C traceparent),
            # so the worker's batch span links back to it.
            with tracer.start_as_current_span(f"publish {topic}", kind=trace.SpanKind.PRODUCER):
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
                headers = [(k, v.encode()) for k, v in carrier.items()]
                pending.append(
                    await producer.send(topic, value=encode_event(event), key=event.source_id.encode(), headers=headers)
                )
            sent += 1
            if on_sent is not None:
                on_sent(event)
        async with explained(kafka):
            for future in pending:
                await future
    finally:
        await producer.stop()
    return sent
