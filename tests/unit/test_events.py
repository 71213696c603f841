"""Event contracts: what is accepted and the messages for what is not."""

from __future__ import annotations

import pytest

from tests.factories import graph, link, upsert
from worker.errors import EventError
from worker.events import AstGraphUpserted, decode_event, encode_event, has_long_number

LIMITS = {"max_bytes": 1_000_000, "max_nodes": 1000}


def _raw(**changes: object) -> bytes:
    event = upsert("pkg/mod.py", 1, graph([("a", "Module"), ("b", "FunctionDef")], [("a", "BODY", "b")]))
    document = event.model_dump(mode="json")
    document.update(changes)
    import orjson

    return orjson.dumps(document)


def test_round_trip_keeps_every_field() -> None:
    """An encoded event decodes to an equal model."""
    event = upsert("pkg/mod.py", 3, graph([("a", "Module")]))
    assert decode_event(encode_event(event), **LIMITS) == event


def test_rows_count_nodes_and_edges() -> None:
    """transaction_size counts graph rows: nodes plus edges."""
    event = decode_event(_raw(), **LIMITS)
    assert isinstance(event, AstGraphUpserted)
    assert event.rows == 3


@pytest.mark.parametrize(
    ("graph_doc", "message"),
    [
        ({"nodes": [{"id": "a", "type": "X"}, {"id": "a", "type": "X"}]}, "duplicate node id 'a'"),
        (
            {"nodes": [{"id": "a", "type": "X"}], "edges": [{"source": "a", "target": "z", "type": "R"}]},
            "unknown node 'z'",
        ),
        ({"nodes": [{"id": "a", "type": "X`) DETACH DELETE n //"}]}, "not a safe Cypher label"),
        (
            {"nodes": [{"id": "a", "type": "X"}], "edges": [{"source": "a", "target": "a", "type": "R-1"}]},
            "not a safe Cypher relationship type",
        ),
        ({"nodes": [{"id": "a", "type": "Intent"}]}, "is reserved"),
        ({"nodes": [{"id": "a", "type": "X", "properties": {"key": "k"}}]}, "reserved"),
        ({"nodes": [{"id": "a", "type": "X", "properties": {"p": {"nested": 1}}}]}, "properties.p"),
        ({"nodes": [{"id": "a\x00b", "type": "X"}]}, "control characters"),
        ({"nodes": [{"id": "a", "type": "X", "properties": {"big": 2**63}}]}, "properties.big"),
        (
            {
                "nodes": [{"id": "a", "type": "X"}],
                "edges": [{"source": "a", "target": "a", "type": "R", "properties": {"w": [1, 2**64 - 1]}}],
            },
            "properties.w: integers must fit in 64 bits",
        ),
    ],
)
def test_invalid_graphs_are_refused_with_a_clear_reason(graph_doc: dict[str, object], message: str) -> None:
    """Each contract violation names what is wrong."""
    with pytest.raises(EventError) as caught:
        decode_event(_raw(graph=graph_doc), **LIMITS)
    assert caught.value.reason == "invalid"
    assert message in caught.value.detail


@pytest.mark.parametrize("big", [2**64, -(2**63) - 1, 10**30])
def test_integers_past_64_bits_are_refused_not_rounded(big: int) -> None:
    """2**64 and beyond (which orjson reads as a float) are refused as integers, never stored rounded."""
    raw = _raw(graph={"nodes": [{"id": "a", "type": "X", "properties": {"big": 1}}]}).replace(
        b'"big":1', b'"big":%d' % big
    )
    with pytest.raises(EventError, match=r"properties\.big: integers must fit in 64 bits"):
        decode_event(raw, **LIMITS)


def test_nodes_and_edges_decode_to_plain_dicts_with_properties() -> None:
    """Nodes and edges are plain dicts; 'properties' is there even when the event left it out."""
    event = decode_event(_raw(graph={"nodes": [{"id": "a", "type": "X"}]}), **LIMITS)
    assert isinstance(event, AstGraphUpserted)
    assert event.graph.nodes == [{"id": "a", "type": "X", "properties": {}}]


def test_unsupported_schema_version_is_named() -> None:
    """A future schema version is refused, naming the supported one."""
    with pytest.raises(EventError, match="schema_version 2 is not supported"):
        decode_event(_raw(schema_version=2), **LIMITS)


def test_oversized_payloads_are_refused_before_parsing() -> None:
    """Byte and node limits apply; the reason is 'oversized'."""
    with pytest.raises(EventError) as by_bytes:
        decode_event(_raw(), max_bytes=10, max_nodes=1000)
    with pytest.raises(EventError) as by_nodes:
        decode_event(_raw(), max_bytes=1_000_000, max_nodes=1)
    assert (by_bytes.value.reason, by_nodes.value.reason) == ("oversized", "oversized")


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", None])
def test_garbage_is_refused(raw: bytes | None) -> None:
    """Non-JSON, non-object and empty values are EventErrors, not crashes."""
    with pytest.raises(EventError):
        decode_event(raw, **LIMITS)


def test_naive_timestamps_are_refused() -> None:
    """occurred_at must carry a time zone."""
    with pytest.raises(EventError, match="time zone"):
        decode_event(_raw(occurred_at="2026-01-01T00:00:00"), **LIMITS)


def test_intent_events_need_a_uuid_source_id() -> None:
    """An intent's source_id is its UUID."""
    import uuid

    event = link(uuid.uuid4(), 1, [("f.py", "n1")])
    document = event.model_dump(mode="json")
    document["source_id"] = "not-a-uuid"
    import orjson

    with pytest.raises(EventError):
        decode_event(orjson.dumps(document), **LIMITS)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"1234567890123456789", True),
        (b'{"n":-12345678901234567890}', True),
        (b"123456789012345678", False),
        (b"123456789 123456789 123456789", False),
        ("١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩".encode(), False),  # Arabic-Indic digits are not JSON numbers
    ],
)
def test_has_long_number_finds_runs_of_19_ascii_digits(data: bytes, expected: bool) -> None:
    """Only a run of 19 or more ASCII digits can be an integer past 64 bits."""
    assert has_long_number(data) is expected
