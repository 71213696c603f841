r"""Kafka record batches read by the worker itself: any bytes a producer can send are handed over, bounded.

Why not aiokafka's reader: it decodes every header name as UTF-8 inside its fetcher, so
one record with a header name that is not UTF-8 (legal on the wire, sent by Java and
librdkafka producers) raises out of ``getmany`` on every call, and the partition never
moves; it inflates a compressed batch whole, so a gzip bomb the broker took (500 MB of
zeros in 0.5 MB) is in memory before any length is checked; and a codec it lacks raises
the same way. aiokafka has no hook for any of this, so :func:`install` puts
:class:`BoundedMemoryRecords` in the place its fetcher builds its record reader from
(``aiokafka.consumer.fetcher.MemoryRecords``, aiokafka 0.14 pinned; a test checks it).

What the reader hands over for the message format v2 (Kafka 0.11+; the older formats
are read by aiokafka's own reader, which no broker of Kafka 4 accepts any more):

- header names that are not UTF-8 with their bytes escaped (``\xNN``), header values
  that are null as ``b""``: the record is taken as any other;
- any timestamp the batch holds (an int64 plus a delta: checked where it is used);
- a key over :data:`MAX_KEY_BYTES`, headers over :data:`MAX_HEADER_BYTES` or a value
  over ``max_value_bytes`` cut to a prefix, with the record's value a :class:`Refused`
  that says why and how large the original was;
- a compressed batch inflated with a bound (``max_batch_bytes``): past it, or if its
  data or a record in it cannot be read, each offset the batch covers comes as a record
  whose value is a :class:`Refused` (``unreadable``) with nothing else of it.

A :class:`Refused` is a ``bytes``, so it travels where a value does, and no producer
can forge one. The consume loop turns it into a dead letter (``worker.consume.intake``).
Once one fetch of a partition has handed over ``fetch_budget`` inflated bytes, the
rest of that fetch is left for the next one (the fetcher asks again from there), so the
records held at once stay bounded whatever the compression ratio.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Self

import cramjam
import structlog
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.legacy_records import LegacyRecordBatch
from aiokafka.record.util import calc_crc32c, decode_varint

log = structlog.get_logger(__name__)

MAX_KEY_BYTES: Final = 16 * 1024  # a source id is at most 512 characters: 2 KiB of UTF-8
MAX_HEADER_BYTES: Final = 64 * 1024  # names and values of all of a record's headers
MAX_HEADERS: Final = 1024
_PREFIX: Final = 64 * 1024  # what a refused value keeps: enough to see what the record was

_LOG_OVERHEAD: Final = 12  # base offset (int64) + batch length (int32)
_MAGIC_AT: Final = 16
# v2 batch header: base offset, length, leader epoch, magic, crc, attributes, last offset
# delta, base timestamp, max timestamp, producer id, producer epoch, base sequence, count.
_HEADER = struct.Struct(">qiibIhiqqqhii")
_CRC_FROM: Final = 21  # the CRC covers the batch from its attributes on
_CODEC_MASK: Final = 0x07
_LOG_APPEND_TIME: Final = 0x08
_TRANSACTIONAL: Final = 0x10
_CONTROL: Final = 0x20
_XERIAL_MAGIC: Final = b"\x82SNAPPY\x00"
_CODECS: Final = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class Refused(bytes):
    """A value the reader would not hand over whole: the bytes kept, why, and the original's size."""

    reason: str
    detail: str
    original_bytes: int

    def __new__(cls, kept: bytes, reason: str, detail: str, original_bytes: int) -> Self:  # noqa: D102
        value = super().__new__(cls, kept)
        value.reason, value.detail, value.original_bytes = reason, detail, original_bytes
        return value

    def __reduce__(self) -> tuple[Any, ...]:
        return (Refused, (bytes(self), self.reason, self.detail, self.original_bytes))


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """What one record and one batch may cost the worker's memory."""

    max_value_bytes: int = 16 * 1024 * 1024
    max_batch_bytes: int = 32 * 1024 * 1024  # a compressed batch, inflated
    fetch_budget: int = 8 * 1024 * 1024  # inflated bytes one partition's fetch hands over at once


_limits = ReadLimits()


@dataclass(frozen=True, slots=True)
class Record:
    """One record as the fetcher wants it (``aiokafka``'s ``DefaultRecord`` fields)."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    checksum: None = None


class _UnreadableError(ValueError):
    """The batch's data cannot be read (or would inflate past the bound): why."""


def _inflate(codec: int, data: bytes, bound: int) -> bytes:
    """The batch's records, decompressed, or _UnreadableError if that fails or would exceed ``bound`` bytes."""
    try:
        if codec == 1:
            return _gunzip(data, bound)
        if codec == 2:  # noqa: PLR2004 - the codec ids of the Kafka protocol
            return _unsnappy(data, bound)
        if codec in (3, 4):
            return _into(cramjam.lz4 if codec == 3 else cramjam.zstd, data, bound)  # noqa: PLR2004
    except (zlib.error, cramjam.DecompressionError, struct.error, ValueError) as exc:
        if isinstance(exc, _UnreadableError):
            raise
        raise _UnreadableError(f"its {_CODECS[codec]} data cannot be read: {exc}") from None
    raise _UnreadableError(f"unknown compression codec {codec}")


def _too_large(bound: int) -> _UnreadableError:
    return _UnreadableError(f"it inflates past {bound} bytes (2 x GPM_WORKER__MAX_EVENT_BYTES + 80 KiB)")


def _gunzip(data: bytes, bound: int) -> bytes:
    out, rest = bytearray(), data
    while rest:  # gzip may hold several members one after the other
        inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        out += inflater.decompress(rest, bound + 1 - len(out))
        if len(out) > bound or inflater.unconsumed_tail:
            raise _too_large(bound)
        if not inflater.eof:
            raise _UnreadableError("its gzip data ends early")
        rest = inflater.unused_data
    return bytes(out)


def _unsnappy(data: bytes, bound: int) -> bytes:
    if not data.startswith(_XERIAL_MAGIC):
        if cramjam.snappy.decompress_raw_len(data) > bound:
            raise _too_large(bound)
        return bytes(cramjam.snappy.decompress_raw(data))
    # Java's framing: a 16-byte header, then blocks of (int32 length, raw snappy block).
    blocks, at = [], 16
    while at < len(data):
        (size,) = struct.unpack_from(">i", data, at)
        block = data[at + 4 : at + 4 + size]
        if size < 0 or len(block) != size:
            raise _UnreadableError("its snappy blocks are cut short")
        blocks.append(block)
        at += 4 + size
    if sum(cramjam.snappy.decompress_raw_len(block) for block in blocks) > bound:
        raise _too_large(bound)
    return b"".join(bytes(cramjam.snappy.decompress_raw(block)) for block in blocks)


def _into(codec: Any, data: bytes, bound: int) -> bytes:  # noqa: ANN401 - cramjam's codec modules are untyped
    """lz4 or zstd frames into a buffer that grows to ``bound``: neither frame has to state its size."""
    size = min(bound + 1, max(64 * 1024, 8 * len(data)))
    while True:
        buffer = bytearray(size)
        try:
            written = codec.decompress_into(data, buffer)
        except cramjam.DecompressionError as exc:
            if "buffer" not in str(exc):
                raise
            if size > bound:
                raise _too_large(bound) from None
            size = min(bound + 1, size * 4)
            continue
        if written > bound:
            raise _too_large(bound)
        return bytes(memoryview(buffer)[:written])


class BoundedBatch:
    """One v2 record batch: the attributes the fetcher reads, and its records in order.

    ``account`` is told how many bytes inflating the batch added, once it has.
    """

    def __init__(self, data: memoryview, account: Callable[[int], None] = lambda _: None) -> None:
        self._data = data
        self._account = account
        (
            self.base_offset,
            _length,
            _epoch,
            self.magic,
            self._crc,
            self._attributes,
            self._last_delta,
            self._first_timestamp,
            self._max_timestamp,
            producer_id,
            _producer_epoch,
            _base_sequence,
            self._count,
        ) = _HEADER.unpack_from(data)
        self.producer_id = producer_id if producer_id >= 0 else None
        self.is_transactional = bool(self._attributes & _TRANSACTIONAL)
        self.is_control_batch = bool(self._attributes & _CONTROL)
        self.next_offset = self.base_offset + self._last_delta + 1
        self._records: Iterator[Record] | None = None

    def validate_crc(self) -> bool:
        """Whether the batch is as its producer wrote it."""
        return bool(calc_crc32c(self._data[_CRC_FROM:]) == self._crc)

    def __iter__(self) -> BoundedBatch:
        return self

    def __next__(self) -> Record:
        if self._records is None:
            self._records = self._read()
        return next(self._records)

    def _read(self) -> Iterator[Record]:
        codec = self._attributes & _CODEC_MASK
        body: bytes | memoryview = self._data[_HEADER.size :]
        if codec:
            try:
                body = _inflate(codec, bytes(body), _limits.max_batch_bytes)
            except _UnreadableError as exc:
                log.error("unreadable record batch", base_offset=self.base_offset, reason=str(exc))  # noqa: TRY400 - no traceback: the reason is all
                yield from self._unreadable(self.base_offset, f"a compressed batch of {len(body)} bytes: {exc}")
                return
            self._account(len(body))
        at, read = 0, 0
        while read < self._count and at < len(body):
            try:
                record, at = self._record(body, at)
            except (IndexError, ValueError, struct.error) as exc:
                # A record that does not parse: the rest of the batch cannot be found either.
                offset = self.base_offset + read
                log.error("unreadable record", offset=offset, reason=str(exc))  # noqa: TRY400 - as above
                yield from self._unreadable(offset, f"its record cannot be read: {exc}")
                return
            read += 1
            yield record

    def _unreadable(self, first: int, detail: str) -> Iterator[Record]:
        timestamp_type = 1 if self._attributes & _LOG_APPEND_TIME else 0
        for offset in range(first, self.next_offset):
            value = Refused(b"", "unreadable", detail, -1)
            yield Record(offset, self._max_timestamp, timestamp_type, None, value, ())

    def _record(self, buffer: bytes | memoryview, at: int) -> tuple[Record, int]:
        length, at = decode_varint(buffer, at)
        end = at + length
        if length < 0 or end > len(buffer):
            raise ValueError(f"a record of {length} bytes overruns its batch")
        at += 1  # the record's attributes: unused
        timestamp_delta, at = decode_varint(buffer, at)
        offset_delta, at = decode_varint(buffer, at)
        key, at, key_size = _field(buffer, at, end, MAX_KEY_BYTES)
        value, at, value_size = _field(buffer, at, end, _limits.max_value_bytes)
        headers, at, refusal = _headers(buffer, at, end)
        if at != end:
            raise ValueError(f"a record's fields take {at - end + length} of its {length} bytes")
        if key_size > MAX_KEY_BYTES:
            refusal = f"its key of {key_size} bytes exceeds the limit of {MAX_KEY_BYTES}"
        if value_size > _limits.max_value_bytes:
            refusal = f"{value_size} bytes exceeds the limit of {_limits.max_value_bytes}"
        if refusal:
            value = Refused((value or b"")[:_PREFIX], "oversized", refusal, value_size)
        if self._attributes & _LOG_APPEND_TIME:
            timestamp, timestamp_type = self._max_timestamp, 1
        else:
            timestamp, timestamp_type = self._first_timestamp + timestamp_delta, 0
        return Record(self.base_offset + offset_delta, timestamp, timestamp_type, key, value, headers), end


def _field(buffer: bytes | memoryview, at: int, end: int, keep: int) -> tuple[bytes | None, int, int]:
    """A length-prefixed byte field: its bytes (a prefix if over ``keep``), the next position, its size."""
    size, at = decode_varint(buffer, at)
    if size < 0:
        return None, at, -1
    if at + size > end:
        raise ValueError(f"a field of {size} bytes overruns its record")
    return bytes(buffer[at : at + (size if size <= keep else min(keep, _PREFIX))]), at + size, size


def _headers(buffer: bytes | memoryview, at: int, end: int) -> tuple[tuple[tuple[str, bytes], ...], int, str]:
    """The record's headers (names escaped where not UTF-8, null values as b""), the next position, a refusal."""
    count, at = decode_varint(buffer, at)
    if count < 0:
        raise ValueError(f"a record with {count} headers")
    headers: list[tuple[str, bytes]] = []
    total, refusal = 0, ""
    for _ in range(count):
        name, at, _size = _field(buffer, at, end, end)
        value, at, _size = _field(buffer, at, end, end)
        total += len(name or b"") + len(value or b"")
        if total > MAX_HEADER_BYTES or len(headers) == MAX_HEADERS:
            refusal = refusal or f"its {count} headers exceed {MAX_HEADERS} headers or {MAX_HEADER_BYTES} bytes"
            continue
        headers.append(((name or b"").decode("utf-8", "backslashreplace"), value or b""))
    return tuple(headers), at, refusal


class BoundedMemoryRecords:
    """The fetched bytes of one partition, batch by batch (``aiokafka``'s ``MemoryRecords`` interface)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0
        self._handed = 0  # bytes of the batches handed over so far, inflated where they were

    def size_in_bytes(self) -> int:
        """The fetched bytes (the fetcher asks when no batch was whole)."""
        return len(self._data)

    def has_next(self) -> bool:
        """Whether a whole batch follows, and this fetch has not handed over its budget yet."""
        if self._handed >= _limits.fetch_budget:
            return False  # the fetcher asks again from the next batch's offset
        rest = len(self._data) - self._at
        if rest <= _MAGIC_AT:
            return False
        (length,) = struct.unpack_from(">i", self._data, self._at + 8)
        return bool(length >= 0 and rest >= _LOG_OVERHEAD + length)

    def next_batch(self) -> BoundedBatch | Any:  # noqa: ANN401 - aiokafka's legacy batch is untyped
        """The next batch (call has_next first)."""
        (length,) = struct.unpack_from(">i", self._data, self._at + 8)
        data = self._data[self._at : self._at + _LOG_OVERHEAD + length]
        self._at += _LOG_OVERHEAD + length
        self._handed += len(data)
        magic = data[_MAGIC_AT]
        if magic < 2:  # noqa: PLR2004 - the message format's version
            return LegacyRecordBatch(bytes(data), magic)
        if len(data) < _HEADER.size:
            raise CorruptRecordException(f"a record batch of {len(data)} bytes is shorter than its header")
        return BoundedBatch(data, self._inflated)

    def _inflated(self, size: int) -> None:
        self._handed += size


def install(limits: ReadLimits) -> None:
    """Read every fetch of this process's consumers with :class:`BoundedMemoryRecords` under ``limits``."""
    global _limits  # noqa: PLW0603 - the fetcher builds its reader from the bytes alone
    if not hasattr(fetcher, "MemoryRecords"):
        msg = "aiokafka's fetcher no longer builds its reader from MemoryRecords: see worker/consume/record_batches.py"
        raise RuntimeError(msg)
    _limits = limits
    fetcher.MemoryRecords = BoundedMemoryRecords
