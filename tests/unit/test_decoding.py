"""Decoding ahead of the consume loop: order, invalid events, and a decoder process that dies."""

from __future__ import annotations

import os

import pytest

from tests.factories import graph, upsert
from worker.consume.decoding import DecodeAhead
from worker.errors import EventError
from worker.events import Event, decode_event, encode_event

DIE = b"kill the decoder"


def _fragile_decode(raw: bytes) -> Event:
    """decode_event, except that one payload kills the process running it."""
    if raw == DIE:
        os._exit(1)
    return decode_event(raw, max_bytes=1_000_000, max_nodes=1000)


def _raw(source: str) -> bytes:
    return encode_event(upsert(source, 1, graph([("a", "Module"), ("b", "Expr")], [("a", "BODY", "b")])))


async def _decode_all(decoder: DecodeAhead, values: list[bytes]) -> list[Event | EventError]:
    try:
        return [outcome async for _, outcome in decoder.decoded(values, lambda v: v)]
    finally:
        decoder.close()


@pytest.mark.parametrize("processes", [0, 1, 2])
async def test_outcomes_come_back_in_record_order_with_reasons(processes: int) -> None:
    """Events and EventErrors (reason and detail intact across the process boundary) keep record order."""
    values = [_raw(f"f{n}.py") for n in range(12)]
    values[5] = b"not json"
    outcomes = await _decode_all(DecodeAhead(_fragile_decode, window=4, processes=processes), values)
    assert [o.source_id if not isinstance(o, EventError) else o.reason for o in outcomes] == [
        *(f"f{n}.py" for n in range(5)),
        "not-json",
        *(f"f{n}.py" for n in range(6, 12)),
    ]
    error = outcomes[5]
    assert isinstance(error, EventError)
    assert error.detail
    assert str(error) == f"not-json: {error.detail}"


async def test_a_record_that_kills_the_decoder_is_refused_and_the_rest_decode() -> None:
    """Only the record that kills a decoder of its own is 'decoder-crashed'; those in flight with it are retried."""
    values = [_raw("before.py"), _raw("with-it.py"), DIE, _raw("in-flight.py"), _raw("after.py")]
    outcomes = await _decode_all(DecodeAhead(_fragile_decode, window=4, processes=1), values)
    crashed = outcomes[2]
    assert isinstance(crashed, EventError)
    assert crashed.reason == "decoder-crashed"
    decoded = [o.source_id for n, o in enumerate(outcomes) if n != 2 and not isinstance(o, EventError)]
    assert decoded == ["before.py", "with-it.py", "in-flight.py", "after.py"]
