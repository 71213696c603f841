"""Decoding a graph that comes again unchanged: checked against the applied graph's digest, not validated again."""

from __future__ import annotations

import json
import os
import pickle
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from tests.factories import graph, upsert
from tests.hostile import documents
from worker.consume.decoding import DecodeAhead
from worker.errors import EventError
from worker.events import AstGraphUpserted, Event, GraphData, decode_event, encode_event, graph_digest, restore_graph

LIMITS = {"max_bytes": 1_000_000, "max_nodes": 1000}
EXAMPLES = int(os.environ.get("GPM_TEST_FUZZ_EXAMPLES", "200"))  # `make fuzz` runs many more
EVENT = upsert("pkg/mod.py", 2, graph([("a", "Module"), ("b", "FunctionDef")], [("a", "BODY", "b")]))
DIGEST = graph_digest(EVENT.graph)


def _outcome(raw: bytes, known_digest: bytes | None = None) -> Event | str:
    """The event (its graph restored if it was left behind) or the refusal."""
    try:
        event = decode_event(raw, **LIMITS, known_digest=known_digest)
    except EventError as exc:
        return str(exc)
    return restore_graph(event, raw) if isinstance(event, AstGraphUpserted) else event


def test_an_unchanged_graph_is_left_behind_with_its_counts_metadata_and_digest() -> None:
    """With the applied graph's digest the graph stays in the record; restored, it is the fully validated event."""
    event = EVENT.model_copy(update={"graph": EVENT.graph.model_copy(update={"metadata": {"commit": "abc"}})})
    raw = encode_event(event)
    fast = decode_event(raw, **LIMITS, known_digest=DIGEST)
    assert isinstance(fast, AstGraphUpserted)
    assert fast.graph.left_behind
    assert (len(fast.graph.nodes), len(fast.graph.edges), fast.rows) == (2, 1, 3)
    assert fast.graph.metadata == {"commit": "abc"}
    assert graph_digest(fast.graph) == DIGEST
    with pytest.raises(LookupError, match="left in its record"):
        list(fast.graph.nodes)
    assert pickle.loads(pickle.dumps(fast)).graph.left_behind  # noqa: S301 - our own bytes
    restored = restore_graph(fast, raw)
    assert not restored.graph.left_behind
    assert restored == decode_event(raw, **LIMITS) == event
    assert graph_digest(restored.graph) == DIGEST


def test_a_graph_published_without_empty_properties_is_still_known() -> None:
    """Producers may leave out ``properties`` where it is empty; the applied digest has ``{}``: the same graph."""
    bare = GraphData.model_validate(
        {
            "nodes": [{"id": "a", "type": "Module"}, {"id": "b", "type": "Name"}],
            "edges": [{"source": "a", "target": "b", "type": "BODY"}],
        }
    )
    event = upsert("pkg/bare.py", 2, bare)
    document = event.model_dump(mode="json")
    for item in (*document["graph"]["nodes"], *document["graph"]["edges"]):
        assert item.pop("properties") == {}
    raw = json.dumps(document).encode()
    fast = decode_event(raw, **LIMITS, known_digest=graph_digest(bare))
    assert isinstance(fast, AstGraphUpserted)
    assert fast.graph.left_behind
    restored = restore_graph(fast, raw)
    assert restored == decode_event(raw, **LIMITS) == event
    assert all(item["properties"] == {} for item in (*restored.graph.nodes, *restored.graph.edges))


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


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow], deadline=None)
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
    assert isinstance(outcomes[0], AstGraphUpserted)
    assert outcomes[0].graph.left_behind
    assert graph_digest(outcomes[0].graph) == DIGEST  # sent along by the decoder process
    assert restore_graph(outcomes[0], values[0]) == EVENT
    assert isinstance(outcomes[1], EventError)


def _decode(raw: bytes, *, known_digest: bytes | None = None) -> Event:
    return decode_event(raw, **LIMITS, known_digest=known_digest)
