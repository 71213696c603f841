"""The worker's own record-batch reader: whatever bytes a batch holds come out, bounded, or as refusals."""

from __future__ import annotations

import os
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kafka_records import BUILDERS, RawName
from worker.consume import record_batches
from worker.consume.record_batches import (
    MAX_HEADER_BYTES,
    MAX_KEY_BYTES,
    BoundedMemoryRecords,
    ReadLimits,
    Record,
    Refused,
)

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def batch(
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    codec: int = 0,
    builder: str = "python",
    base_offset: int = 0,
) -> bytes:
    """One v2 batch of (timestamp, key, value, headers), as a producer's builder writes it."""
    build = BUILDERS[builder](2, codec, 0, -1, -1, -1, 1 << 30)
    for n, (timestamp, key, value, headers) in enumerate(records):
        build.append(n, timestamp, key, value, headers)
    data = bytearray(build.build())
    struct.pack_into(">q", data, 0, base_offset)  # the broker sets it; the CRC does not cover it
    return bytes(data)


def read(data: bytes, limits: ReadLimits | None = None) -> list[Record]:
    """Every record the bounded reader hands over for ``data``."""
    previous = record_batches._limits
    record_batches._limits = limits or ReadLimits()
    try:
        out: list[Record] = []
        records = BoundedMemoryRecords(data)
        while records.has_next():
            b = records.next_batch()
            assert b.validate_crc()
            out.extend(b)
        return out
    finally:
        record_batches._limits = previous


def aiokafka_read(data: bytes) -> list[Any]:
    """The same bytes through aiokafka's own reader."""
    out: list[Any] = []
    records = MemoryRecords(data)
    while records.has_next():
        out.extend(records.next_batch())
    return out


@pytest.mark.parametrize("builder", ["c", "python"])
@pytest.mark.parametrize("codec", list(CODECS))
def test_what_aiokafka_reads_reads_the_same(builder: str, codec: str) -> None:
    """Keys, values, headers, timestamps and offsets as aiokafka's own reader gives them, every codec."""
    rows: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
        (1_700_000_000_000 + n, f"k{n}".encode(), b'{"n": %d}' % n * 50, [("traceparent", b"00-ab"), ("h", b"")])
        for n in range(20)
    ]
    rows.append((1_700_000_000_000, None, None, []))
    data = batch(rows, CODECS[codec], builder, base_offset=1000)
    ours, theirs = read(data), aiokafka_read(data)
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in ours] == [
        (r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in theirs
    ]
    assert ours[0].offset == 1000


def test_a_header_name_that_is_not_utf8_is_read_escaped() -> None:
    """Aiokafka raises on such a name (for every fetch of the partition, for ever); here it is escaped."""
    data = batch([(0, b"k", b"v", [(RawName(b"\xff\xfeh"), b"x"), ("ok", None)])])
    with pytest.raises(UnicodeDecodeError):
        aiokafka_read(data)
    (record,) = read(data)
    assert record.headers == (("\\xff\\xfeh", b"x"), ("ok", b""))
    assert record.value == b"v"
    assert not isinstance(record.value, Refused)


@pytest.mark.parametrize("timestamp", [-(2**63), -1, 0, 253402300800000, 2**63 - 1])
def test_any_int64_timestamp_comes_through(timestamp: int) -> None:
    """The producer sets CreateTime: any int64, checked where it is used (a tombstone's time)."""
    (record,) = read(batch([(timestamp, b"k", None, [])]))
    assert record.timestamp == timestamp
    assert record.value is None  # a tombstone stays a tombstone


def test_an_oversized_value_is_refused_with_a_prefix_and_its_size() -> None:
    """Past max_value_bytes: a 64 KiB prefix, the reason and the original size, never the whole."""
    value = b"x" * 300_000
    (record,) = read(batch([(0, b"k", value, [])]), ReadLimits(max_value_bytes=100_000))
    assert isinstance(record.value, Refused)
    assert (record.value.reason, record.value.original_bytes) == ("oversized", 300_000)
    assert bytes(record.value) == value[: 64 * 1024]
    assert "300000 bytes exceeds the limit of 100000" in record.value.detail


def test_an_oversized_key_or_headers_refuse_the_record() -> None:
    """A key over 16 KiB or headers over 64 KiB: the record is refused, what is kept is bounded."""
    key = b"k" * (MAX_KEY_BYTES + 1)
    headers: list[tuple[str, bytes | None]] = [("h", b"v" * 1000)] * (MAX_HEADER_BYTES // 1000 + 5)
    first, second = read(batch([(0, key, b"v", []), (0, b"k", b"v", headers)]))
    assert isinstance(first.value, Refused)
    assert "key of 16385 bytes" in first.value.detail
    assert first.key is not None
    assert first.key == key[:MAX_KEY_BYTES]
    assert isinstance(second.value, Refused)
    assert "headers exceed" in second.value.detail
    assert sum(len(k) + len(v) for k, v in second.headers) <= MAX_HEADER_BYTES


def test_a_gzip_bomb_is_refused_without_inflating_it() -> None:
    """100 MB of zeros in a 0.1 MB batch: every offset it covers comes refused; memory stays near the bound."""
    zeros = b"\0" * (100 * 1024 * 1024)
    data = batch([(0, b"k", zeros, []), (0, b"k2", b"{}", [])], CODECS["gzip"])
    del zeros
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        records = read(data, ReadLimits(max_batch_bytes=4 * 1024 * 1024))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.offset for r in records] == [0, 1]
    for record in records:
        assert isinstance(record.value, Refused)
        assert record.value.reason == "unreadable"
        assert "inflates past 4194304 bytes" in record.value.detail
    assert peak < 16 * 1024 * 1024


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd"])
def test_every_codec_is_bounded(codec: str) -> None:
    """snappy, lz4 and zstd batches past the bound are refused the same way."""
    data = batch([(0, b"k", b"a" * 3_000_000, [])], CODECS[codec])
    (record,) = read(data, ReadLimits(max_batch_bytes=1024 * 1024))
    assert isinstance(record.value, Refused)
    assert "inflates past" in record.value.detail
    (whole,) = read(data, ReadLimits(max_batch_bytes=8 * 1024 * 1024))
    assert whole.value == b"a" * 3_000_000


def _with_body(data: bytes, body: bytes, attributes: int | None = None) -> bytes:
    """``data``'s batch header over another body, with length and CRC made right for it."""
    header = bytearray(data[:61])
    if attributes is not None:
        struct.pack_into(">h", header, 21, attributes)
    struct.pack_into(">i", header, 8, 61 - 12 + len(body))
    whole = header + body
    struct.pack_into(">I", whole, 17, calc_crc32c(bytes(whole[21:])))
    return bytes(whole)


def test_unreadable_data_or_records_are_refused_offset_by_offset() -> None:
    """Corrupt compressed data, an unknown codec, a record overrunning its batch: refusals, nothing raised."""
    good = batch([(0, b"k", b"v", []), (0, b"k", b"w", []), (0, b"k", b"z", [])], base_offset=7)
    cases = {
        "gzip data": _with_body(good, b"\x1f\x8b not gzip", attributes=1),
        "codec 6": _with_body(good, b"x", attributes=6),
        "negative record length": _with_body(good, b"\x7f" + good[62:]),
        "record overruns its batch": _with_body(good, b"\x7e" + good[62:]),
    }
    for name, data in cases.items():
        records = read(data)
        assert [r.offset for r in records] == [7, 8, 9], name
        assert all(isinstance(r.value, Refused) and r.value.reason == "unreadable" for r in records), name
    # A cut-off record after good ones: the good ones come, the rest are refused.
    truncated = read(_with_body(good, good[61:-3]))
    assert [r.value for r in truncated[:2]] == [b"v", b"w"]
    assert isinstance(truncated[2].value, Refused)


def test_a_fetch_hands_over_its_budget_then_stops() -> None:
    """Inflated bytes past fetch_budget: the rest of the fetch is left for the next one (asked from there)."""
    one = batch([(0, b"k", b"a" * 100_000, [])], CODECS["gzip"])
    data = b"".join(one[:0] + struct.pack(">q", n) + one[8:] for n in range(10))
    previous = record_batches._limits
    record_batches._limits = ReadLimits(fetch_budget=250_000)
    try:
        records = BoundedMemoryRecords(data)
        handed = 0
        while records.has_next():
            list(records.next_batch())
            handed += 1
    finally:
        record_batches._limits = previous
    assert handed == 3
    assert BoundedMemoryRecords(data[:-5]).size_in_bytes() == len(data) - 5


def test_a_partial_batch_at_the_end_of_a_fetch_is_left() -> None:
    """The broker cuts a fetch at its size: a batch that is not whole is not read."""
    data = batch([(0, b"k", b"v", [])])
    records = BoundedMemoryRecords(data + data[:30])
    assert records.has_next()
    records.next_batch()
    assert not records.has_next()


def test_refused_survives_pickling() -> None:
    """A refused value keeps its reason through a process boundary."""
    import pickle

    value = pickle.loads(pickle.dumps(Refused(b"ab", "oversized", "why", 9)))  # noqa: S301 - our own bytes
    assert (bytes(value), value.reason, value.detail, value.original_bytes) == (b"ab", "oversized", "why", 9)


def test_install_replaces_the_fetchers_reader() -> None:
    """Aiokafka 0.14's fetcher builds its reader from MemoryRecords: the one name install replaces."""
    original = fetcher.MemoryRecords
    try:
        record_batches.install(ReadLimits(max_value_bytes=5000))
        assert fetcher.MemoryRecords is BoundedMemoryRecords
        assert record_batches._limits.max_value_bytes == 5000
    finally:
        fetcher.MemoryRecords = original
        record_batches._limits = ReadLimits()


_bytes = st.binary(max_size=300)


@st.composite
def _records(draw: st.DrawFn) -> list[tuple[int, bytes | None, bytes | None, list[tuple[Any, bytes | None]]]]:
    rows = []
    # Any int64 for the batch's first timestamp; the others within 2**62 of it: a record
    # carries its timestamp as a signed 64-bit delta from the first, so no batch on the
    # wire (nor aiokafka's builder, which raises OverflowError) holds a wider spread.
    first = draw(st.integers(-(2**63), 2**63 - 1))
    spread = st.integers(max(-(2**63), first - 2**62), min(2**63 - 1, first + 2**62))
    for n in range(draw(st.integers(1, 6))):
        headers = draw(st.lists(st.tuples(_bytes.map(RawName), st.none() | _bytes), max_size=4))
        rows.append(
            (
                first if n == 0 else draw(spread),
                draw(st.none() | _bytes),
                draw(st.none() | _bytes),
                headers,
            )
        )
    return rows


@settings(
    max_examples=max(200, int(os.environ.get("GPM_TEST_FUZZ_EXAMPLES", "0"))),
    suppress_health_check=[HealthCheck.too_slow],
    deadline=None,
)
@given(rows=_records(), codec=st.sampled_from(list(CODECS.values())))
def test_any_record_comes_out_as_it_went_in(
    rows: list[tuple[int, bytes | None, bytes | None, list[tuple[Any, bytes | None]]]], codec: int
) -> None:
    """Generated keys, values, header names and values of any bytes, any timestamps: read back exactly."""
    records = read(batch(rows, codec))
    assert len(records) == len(rows)
    for record, (timestamp, key, value, headers) in zip(records, rows, strict=True):
        assert (record.timestamp, record.key, record.value) == (timestamp, key, value)
        assert record.headers == tuple((name.raw.decode("utf-8", "backslashreplace"), v or b"") for name, v in headers)


def _iterate(data: bytes) -> Iterator[Record]:
    records = BoundedMemoryRecords(data)
    while records.has_next():
        yield from records.next_batch()


def test_gzip_with_several_members_is_read_whole() -> None:
    """Some producers write a gzip stream of several members: all of it is the batch."""
    good = batch([(0, b"k", b"v", []), (0, b"k2", b"w", [])])
    body = good[61:]
    half = len(body) // 2
    members = _gzip(body[:half]) + _gzip(body[half:])
    assert [r.value for r in _iterate(_with_body(good, members, attributes=1))] == [b"v", b"w"]


def _gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=31)
    return compressor.compress(data) + compressor.flush()
