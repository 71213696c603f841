"""Hostile Kafka records for tests: any bytes in every field, written by either of aiokafka's batch builders.

aiokafka writes record batches with a C builder, or a pure-Python one when its
extensions are off; both are used, switched per send. Header names are str in its API
and the Python builder encodes them with ``str.encode``: :class:`RawName` makes that give
any bytes, invalid UTF-8 included, as Java and librdkafka producers can send.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any, Self

from aiokafka.producer import message_accumulator
from aiokafka.producer import producer as producer_module
from aiokafka.record import default_records
from hypothesis import strategies as st

from tests.factories import graph, upsert
from worker.events import encode_event

BUILDERS = {"c": default_records.DefaultRecordBatchBuilder, "python": default_records._DefaultRecordBatchBuilderPy}
COMPRESSIONS = (None, "gzip", "snappy", "lz4", "zstd")


class RawName(str):
    """A header name whose wire bytes are any bytes (with the Python builder)."""

    __slots__ = ("raw",)

    def __new__(cls, raw: bytes) -> Self:  # noqa: D102
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        """The raw bytes, whatever the encoding asked for."""
        return self.raw


@contextlib.contextmanager
def builder(kind: str) -> Iterator[None]:
    """Producers' batches written by aiokafka's ``kind`` builder ("c" or "python") inside the block."""
    # The producer sizes a record with the builder class too, before the accumulator builds with it.
    modules = (message_accumulator, producer_module)
    before = [module.DefaultRecordBatchBuilder for module in modules]
    for module in modules:
        module.DefaultRecordBatchBuilder = BUILDERS[kind]
    try:
        yield
    finally:
        for module, original in zip(modules, before, strict=True):
            module.DefaultRecordBatchBuilder = original


class HostileRecord:
    """One record to produce, and what the worker must make of it.

    ``expect_reason``: a letter's reason, "*" for a letter of any reason, "" for applied,
    None for either outcome. Not a dataclass: hypothesis prints those field by field, and a
    bomb's value is megabytes; this one's repr is short.
    """

    def __init__(  # noqa: PLR0917 - the generator builds it positionally, one field a line
        self,
        kind: str,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[bytes, bytes | None], ...],
        timestamp_ms: int | None,
        compression: str | None,
        builder: str,
        expect_reason: str | None,
    ) -> None:
        self.kind, self.key, self.value, self.headers = kind, key, value, headers
        self.timestamp_ms, self.compression, self.builder = timestamp_ms, compression, builder
        self.expect_reason = expect_reason

    def __repr__(self) -> str:
        def short(data: bytes | None) -> str:
            return "None" if data is None else repr(data[:24]) + (f"...({len(data)} bytes)" if len(data) > 24 else "")

        headers = ", ".join(f"({short(k)}, {short(v)})" for k, v in self.headers)
        return (
            f"HostileRecord({self.kind}, key={short(self.key)}, value={short(self.value)}, headers=[{headers}], "
            f"timestamp_ms={self.timestamp_ms}, {self.compression}, {self.builder} builder, "
            f"expect={self.expect_reason!r})"
        )

    def headers_for(self, builder_kind: str) -> list[tuple[Any, bytes | None]]:
        """Header names as the builder takes them: raw bytes for Python's, text for C's (which encodes UTF-8)."""
        if builder_kind == "python":
            return [(RawName(name), value) for name, value in self.headers]
        return [(name.decode("utf-8", "replace"), value) for name, value in self.headers]


def _valid_value(source: str) -> bytes:
    return encode_event(upsert(source, 1, graph([("m", "Module"), ("f", "FunctionDef")], [("m", "BODY", "f")])))


@st.composite
def hostile_records(draw: st.DrawFn, max_event_bytes: int) -> HostileRecord:
    """A record with any key, headers and timestamp around a valid event, garbage, an oversized value or a bomb."""
    kind = draw(st.sampled_from(["valid", "valid", "garbage", "oversized", "bomb", "tombstone"]))
    source = f"gen/{uuid.uuid4().hex}.py"
    key = draw(
        st.one_of(
            st.just(source.encode()),
            st.none(),
            st.binary(max_size=40),
            st.sampled_from([b"\xff\xfe", b"a\x00b", b"k" * 20_000]),
        )
    )
    names = st.one_of(st.binary(max_size=20), st.sampled_from([b"\xff", b"\xc3\x28", b"traceparent", b""]))
    values = st.one_of(st.none(), st.binary(max_size=40), st.sampled_from([b"v" * 70_000, b"00-zz-garbage-01"]))
    headers = tuple(draw(st.lists(st.tuples(names, values), max_size=3)))
    timestamp = draw(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.sampled_from([-1, 253402300800000])))
    compression = draw(st.sampled_from(COMPRESSIONS))
    build = draw(st.sampled_from(sorted(BUILDERS)))
    value: bytes | None
    if kind == "valid":
        value = _valid_value(source)
    elif kind == "garbage":
        value = draw(st.binary(max_size=200))
    elif kind == "oversized":
        value = b"{" + b" " * (max_event_bytes + draw(st.integers(1, 5000)))
    elif kind == "bomb":
        value, compression = b"\0" * (40 * max_event_bytes), draw(st.sampled_from(COMPRESSIONS[1:]))
    else:
        value = None
        key = b"" if key is None else key  # aiokafka's producer sends nothing without a key or a value
    oversized_around = (key is not None and len(key) > 16 * 1024) or sum(
        len(name) + len(v or b"") for name, v in headers
    ) > 64 * 1024
    expect = {
        "valid": "",
        "garbage": "*",
        "oversized": "oversized",
        "bomb": "unreadable" if compression else "oversized",
        "tombstone": None,
    }[kind]
    if oversized_around and kind != "bomb":
        expect = "oversized"
    return HostileRecord(kind, key, value, headers, timestamp, compression, build, expect)
