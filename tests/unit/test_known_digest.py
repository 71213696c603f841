"""Decoding a graph that comes again unchanged: checked against the applied graph's digest, not validated again."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from tests.factories import graph, upsert
from tests.hostile import documents
from worker.consume.decoding import DecodeAhead
from worker.errors import EventError
from worker.events import AstGraphUpserted, Event, GraphData, decode_event, encode_event, graph_digest

LIMITS = {"max_bytes": 1_000_000, "max_nodes": 1000}
EVENT = upsert("pkg/mod.py", 2, graph([("a", "Module"), ("b", "FunctionDef")], [("a", "BODY", "b")]))
DIGEST = graph_digest(EVENT.graph)


def _outcome(raw: bytes, known_digest: bytes | None = None) -> Event | str:
    try:
        return decode_event(raw, **LIMITS, known_digest=known_digest)
    except EventError as exc:
        return str(exc)


def test_an_unchanged_graph_decodes_to_the_same_event() -> None:
    """With the applied graph's digest the event is the one full validation gives, graph included."""
    raw = encode_event(EVENT)
    fast = decode_event(raw, **LIMITS, known_digest=DIGEST)
    assert fast == decode_event(raw, **LIMITS)
    assert isinstance(fast, AstGraphUpserted)
    assert fast.graph.model_dump() == EVENT.graph.model_dump()
    assert graph_digest(fast.graph) == DIGEST


def test_the_rest_of_the_event_is_still_validated() -> None:
    """An unchanged graph does not excuse a bad envelope or bad metadata: same refusal as without the digest."""
    document = EVENT.model_dump(mode="json")
    for changes in (
        {"producer": ""},
        {"source_version": -1},
        {"graph": {**document["graph"], "metadata": {"x": 2**70}}},
    ):
        raw = json.dumps({**document, **changes}).encode()
        refused = _outcome(raw, DIGEST)
        assert isinstance(refused, str)
        assert refused == _outcome(raw)


@pytest.mark.parametrize(
    "change",
    [
        lambda g: g["nodes"][0].pop("properties"),  # validation would add {}: not the stored graph
        lambda g: g["nodes"][0].update(type="bad label!"),
        lambda g: g["nodes"].append("not a node"),
        lambda g: g["edges"].append({"source": 1, "target": "b", "type": "BODY"}),
        lambda g: g.update(extra=1),
    ],
)
def test_any_other_graph_is_validated_whole(change: Any) -> None:
    """A graph that is not exactly the applied one gets full validation, refusal reasons included."""
    document = EVENT.model_dump(mode="json")
    change(document["graph"])
    raw = json.dumps(document).encode()
    assert _outcome(raw, DIGEST) == _outcome(raw)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(documents())
def test_known_digests_never_change_an_outcome(document: dict[str, Any]) -> None:
    """Generated events: given the digest of their graph as validated on its own, the outcome is the same."""
    raw = json.dumps(document).encode()
    graph_document = document.get("graph")
    try:
        known = graph_digest(GraphData.model_validate(graph_document)) if graph_document is not None else None
    except ValueError:
        known = None  # an invalid graph was never applied, so no digest of it is ever known
    assert _outcome(raw, known) == _outcome(raw)


async def test_the_decoder_passes_each_record_its_known_digest() -> None:
    """DecodeAhead hands the digest of each record's source to the decoder, in a child process too."""
    values = [encode_event(EVENT), orjson.dumps({**EVENT.model_dump(mode="json"), "producer": ""})]
    decoder = DecodeAhead(_decode, processes=1)
    try:
        outcomes = [o async for _, o in decoder.decoded(values, lambda v: v, lambda _: DIGEST)]
    finally:
        decoder.close()
    assert outcomes[0] == EVENT
    assert isinstance(outcomes[1], EventError)


def _decode(raw: bytes, *, known_digest: bytes | None = None) -> Event:
    return decode_event(raw, **LIMITS, known_digest=known_digest)
