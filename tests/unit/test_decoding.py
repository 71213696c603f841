"""Decoding ahead of the consume loop: order, invalid events, and a decoder process that dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.factories import graph, upsert
from worker.consume.decoding import DecodeAhead
from worker.errors import EventError
from worker.events import Event, decode_event, encode_event

DIE = b"kill the decoder"


def _fragile_decode(raw: bytes, *, known_digest: bytes | None = None) -> Event:
    """decode_event, except that one payload kills the process running it."""
    if raw == DIE:
        os._exit(1)
    return decode_event(raw, max_bytes=1_000_000, max_nodes=1000, known_digest=known_digest)


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


async def _submitted_at_first_result(values: list[bytes], window_bytes: int) -> int:
    """How many records were handed to the decoder when the first outcome came out."""
    decoder = DecodeAhead(_fragile_decode, window=8, processes=0, window_bytes=window_bytes)
    submitted: list[bytes | None] = []
    submit = decoder._submit

    def counting(value: bytes | None, known_digest: bytes | None, executor: object = None) -> object:
        submitted.append(value)
        return submit(value, known_digest, executor)  # type: ignore[arg-type]

    decoder._submit = counting  # type: ignore[method-assign,assignment]
    try:
        async for _ in decoder.decoded(values, lambda v: v):
            return len(submitted)
    finally:
        decoder.close()
    return 0


async def test_large_records_are_decoded_ahead_only_up_to_the_byte_window() -> None:
    """Small records go ahead eight at a time; large ones only while their bytes stay within the window.

    A decoded graph takes about 20 times its JSON in memory. (Counted as the first outcome
    comes out: by then the window has moved on by one.)
    """
    values = [_raw(f"f{n}.py") for n in range(6)]
    size = len(values[0])
    assert await _submitted_at_first_result(values, 100 * size) == 6
    assert await _submitted_at_first_result(values, size) == 2
    assert await _submitted_at_first_result(values, 2 * size + 1) == 4


async def test_a_record_that_kills_the_decoder_is_refused_and_the_rest_decode() -> None:
    """Only the record that kills a decoder of its own is 'decoder-crashed'; those in flight with it are retried."""
    values = [_raw("before.py"), _raw("with-it.py"), DIE, _raw("in-flight.py"), _raw("after.py")]
    outcomes = await _decode_all(DecodeAhead(_fragile_decode, window=4, processes=1), values)
    crashed = outcomes[2]
    assert isinstance(crashed, EventError)
    assert crashed.reason == "decoder-crashed"
    decoded = [o.source_id for n, o in enumerate(outcomes) if n != 2 and not isinstance(o, EventError)]
    assert decoded == ["before.py", "with-it.py", "in-flight.py", "after.py"]


_ORPHAN_CHECK = """
import asyncio, os, signal
from worker.consume.decoding import DecodeAhead
from tests.unit.test_decoding import _fragile_decode, _raw

async def main():
    decoder = DecodeAhead(_fragile_decode, processes=1)
    [_ async for _ in decoder.decoded([_raw("a.py")], lambda v: v)]
    print(*(p.pid for p in decoder._executor._processes.values()), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_the_decoder_process_exits_when_the_worker_is_killed() -> None:
    """A kill -9 of the worker takes its decoder process with it (no orphan holding the worker's output open)."""
    command = [sys.executable, "-c", _ORPHAN_CHECK]
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)  # noqa: S603 - our own script
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    children = [int(pid) for pid in done.stdout.split()]
    assert children
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children), f"decoder processes {children} outlived the worker"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) is gone for this purpose.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
