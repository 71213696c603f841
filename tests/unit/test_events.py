"""Event contracts: what is accepted and the messages for what is not."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize("where", ["metadata", "property", "node id"])
def test_a_lone_surrogate_escape_is_refused_where_no_store_could_hold_it(where: str) -> None:
    r"""A ``\ud800`` escape alone is valid JSON text but no Unicode: jsonb refuses it, so decoding does."""
    document = json.loads(_raw())
    text = "x\ud800"
    if where == "metadata":
        document["graph"]["metadata"] = {"note": text}
    elif where == "property":
        document["graph"]["nodes"][0]["properties"] = {"name": text}
    else:
        document["graph"]["nodes"] = [{"id": text, "type": "Module"}]
        document["graph"]["edges"] = []
    with pytest.raises(EventError) as refused:
        decode_event(json.dumps(document).encode(), **LIMITS)
    assert refused.value.reason == "not-json"
    assert "surrogate" in str(refused.value)


def test_naive_timestamps_are_refused() -> None:
    """occurred_at must carry a time zone."""
    with pytest.raises(EventError, match="with an offset"):
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


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"d": value}
    return value


def _upsert_doc(**changes: object) -> dict[str, object]:
    import orjson

    document = orjson.loads(_raw())
    document.update(changes)
    return document


def _without_graph(document: dict[str, object]) -> dict[str, object]:
    document.pop("graph", None)
    return document


_NODE = {"id": "a", "type": "X"}
_UUID = "9f1b7f4e-2b5a-4c3e-9d8e-1a2b3c4d5e6f"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        # Issue 16, case 1: metadata PostgreSQL's jsonb (and orjson) cannot take.
        (_upsert_doc(graph={"nodes": [_NODE], "metadata": {"inode": 2**70}}), "integers must fit in 64 bits"),
        (_upsert_doc(graph={"nodes": [_NODE], "metadata": {"deep": _nested(300)}}), "nested deeper than 32"),
        (_upsert_doc(graph={"nodes": [_NODE], "metadata": {"s": "a\x00b"}}), "NUL"),
        (_upsert_doc(graph={"nodes": [_NODE], "metadata": {"a\x00": 1}}), "NUL"),
        # Case 2: property names FalkorDB cannot write into query text.
        (_upsert_doc(graph={"nodes": [{**_NODE, "properties": {"a`b": 1}}]}), "backtick"),
        (_upsert_doc(graph={"nodes": [{**_NODE, "properties": {"a\x00b": 1}}]}), "backtick"),
        # Case 4: values PostgreSQL refuses at step 3.
        (_upsert_doc(producer="nul\x00producer"), "control characters"),
        (_upsert_doc(occurred_at="0001-01-01T00:00:00+14:00"), "out of range"),
        (_without_graph(_upsert_doc(event_type="ast-graph.deleted", source_version=2**63)), "less than or equal"),
        # Case 5: one intent, one spelling.
        (_without_graph(_upsert_doc(event_type="intent-link.deleted", source_id=_UUID.upper())), "canonical form"),
        (_without_graph(_upsert_doc(event_type="intent-link.deleted", source_id="{" + _UUID + "}")), "at most 36"),
        (_without_graph(_upsert_doc(event_type="intent-link.deleted", source_id="urn:uuid:" + _UUID)), "at most 36"),
        (_upsert_doc(event_id=_UUID.upper()), "canonical form"),
        # Case 6: strict types, lists of one type.
        (_upsert_doc(source_version="5"), "source_version"),
        (_upsert_doc(source_version=5.0), "source_version"),
        (_upsert_doc(source_version=True), "source_version"),
        (_upsert_doc(graph={"nodes": [{**_NODE, "properties": {"l": [True, 1]}}]}), "properties.l"),
        (_upsert_doc(graph={"nodes": [{**_NODE, "properties": {"l": [1, 2.5]}}]}), "properties.l"),
        # Case 7: names matched whole.
        (_upsert_doc(graph={"nodes": [{"id": "a", "type": "Module\n"}]}), "not a safe Cypher label"),
        (
            _upsert_doc(graph={"nodes": [_NODE], "edges": [{"source": "a", "target": "a", "type": "BODY\n"}]}),
            "not a safe Cypher relationship type",
        ),
    ],
)
def test_events_no_store_can_hold_are_refused_at_decode_time(document: dict[str, object], message: str) -> None:
    """Every hostile case of issue 16 is refused by validation, naming the problem (never by a store later)."""
    import json

    with pytest.raises(EventError) as caught:
        decode_event(json.dumps(document).encode(), **LIMITS)
    assert caught.value.reason == "invalid"
    assert message in caught.value.detail


@pytest.mark.parametrize("version", [True, 1.0])
def test_schema_version_must_be_the_integer_one(version: object) -> None:
    """schema_version true or 1.0 is not version 1."""
    with pytest.raises(EventError) as caught:
        decode_event(_raw(schema_version=version), **LIMITS)
    assert caught.value.reason == "unsupported-version"


def test_a_thousand_levels_of_nesting_are_refused_without_crashing() -> None:
    """Deeper than the JSON parser goes: an EventError, not a dead decoder or a RecursionError."""
    raw = _raw().replace(b'"metadata":{}', b'"metadata":{"d":' + b"[" * 1000 + b"]" * 1000 + b"}")
    with pytest.raises(EventError):
        decode_event(raw, **LIMITS)


def test_nul_in_a_string_property_is_refused_for_a_backend_that_cannot_store_it() -> None:
    """FalkorDB cannot store NUL: the decoder refuses such a graph there ('unstorable'), and takes it elsewhere."""
    raw = _raw(graph={"nodes": [{"id": "a", "type": "X", "properties": {"v": "a\x00b"}}]})
    assert decode_event(raw, **LIMITS)
    with pytest.raises(EventError) as caught:
        decode_event(raw, **LIMITS, strings_may_hold_nul=False)
    assert caught.value.reason == "unstorable"
    assert "graph.nodes.0.properties.v" in caught.value.detail


def test_a_list_of_floats_and_a_float_written_whole_are_kept_as_floats() -> None:
    """[1.0, 2.5] and 5.0 stay floats; 5 stays an integer; "5" stays a string."""
    raw = _raw(graph={"nodes": [{"id": "a", "type": "X", "properties": {"l": [1.0, 2.5], "f": 5.0, "i": 5, "s": "5"}}]})
    event = decode_event(raw, **LIMITS)
    assert isinstance(event, AstGraphUpserted)
    props = event.graph.nodes[0]["properties"]
    assert [type(v) for v in (props["l"][0], props["f"], props["i"], props["s"])] == [float, float, int, str]


def test_more_relationship_types_than_a_graph_may_have_are_refused() -> None:
    """At most 1000 relationship types in one graph: each new one is a query plan on Neo4j."""
    from worker.events import MAX_RELATIONSHIP_TYPES

    def event(types: int) -> bytes:
        nodes = [{"id": f"n{i}", "type": "Name"} for i in range(types + 1)]
        edges = [{"source": f"n{i}", "target": f"n{i + 1}", "type": f"T{i}"} for i in range(types)]
        document = json.loads(encode_event(upsert("a.py", 1, graph([("n0", "Name")]))))
        document["graph"] = {"nodes": nodes, "edges": edges}
        return json.dumps(document).encode()

    decode_event(event(MAX_RELATIONSHIP_TYPES), max_bytes=10**7, max_nodes=10**5)
    with pytest.raises(EventError, match="1001 relationship types in one graph; at most 1000"):
        decode_event(event(MAX_RELATIONSHIP_TYPES + 1), max_bytes=10**7, max_nodes=10**5)


def test_names_arcadedb_refuses_are_refused_at_decode_time_for_it_only() -> None:
    """With ArcadeDB's names, its reserved properties and types and a label that is also a type are unstorable."""
    from worker.stores.neo4j_shapes import ARCADEDB_NAMES, store_names_for

    assert store_names_for("Neo4j/5.26.0 compatible (ArcadeDB 26.10.2)") is ARCADEDB_NAMES
    assert store_names_for("Neo4j/5.26.0") is None

    def event(label: str, rel_type: str, prop: str) -> bytes:
        document = json.loads(encode_event(upsert("a.py", 1, graph([("a", "Name")]))))
        document["graph"] = {
            "nodes": [{"id": "a", "type": label, "properties": {prop: 1}}, {"id": "b", "type": "Name"}],
            "edges": [{"source": "a", "target": "b", "type": rel_type}],
        }
        return json.dumps(document).encode()

    for raw, why in (
        (event("Name", "R", "@rid"), "property name '@rid': ArcadeDB reserves the name"),
        (event("Name", "Name", "p"), "'Name' is a label and a relationship type"),
    ):
        decode_event(raw, max_bytes=10**6, max_nodes=10)  # the contract allows it
        with pytest.raises(EventError, match=why) as refused:
            decode_event(raw, max_bytes=10**6, max_nodes=10, store_names=ARCADEDB_NAMES)
        assert refused.value.reason == "unstorable"
    decode_event(event("Name", "Edge", "@version"), max_bytes=10**6, max_nodes=10, store_names=ARCADEDB_NAMES)
