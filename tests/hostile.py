"""Events at the edges of the contract, for the agreement test and the hostile-input test.

``documents()`` draws a valid event of any type and then, for up to two kinds of field,
values at or past the contract's edges: names with newlines, backticks and NUL, integers
past 64 bits, mixed lists, UUIDs in other spellings, timestamps without offsets or out of
range, strict-type traps ("5", 5.0, true). Rules a JSON Schema cannot express (unique ids,
edges between known nodes) hold by construction.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

_EDGE_TEXT = ["", "Module\n", "x" * 64, "x" * 65, "a`b", "a\x00b", "tab\there", "ünï", "\x7f", " ", "1x", "a-b"]
edge_text = st.one_of(st.sampled_from(_EDGE_TEXT), st.text(max_size=8))
plain_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True)
big_ints = st.sampled_from([0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 10**30])
finite = st.floats(allow_nan=False, allow_infinity=False)
valid_scalars = st.one_of(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1), finite, st.booleans())
valid_values = st.one_of(
    valid_scalars,
    st.none(),
    st.lists(st.text(max_size=3), max_size=3),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
    st.lists(finite, max_size=3),
    st.lists(st.booleans(), max_size=3),
)
edge_values = st.one_of(big_ints, st.lists(st.one_of(big_ints, finite, st.booleans(), st.text(max_size=2)), max_size=4))
FIELDS = (
    "event_id",
    "source_id",
    "source_version",
    "occurred_at",
    "producer",
    "schema_version",
    "label",
    "rel_type",
    "node_id",
    "prop_name",
    "prop_value",
    "metadata",
)
EDGES: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.uuids().flatmap(
        lambda u: st.sampled_from([str(u).upper(), "{" + str(u) + "}", u.urn, u.hex, "not-a-uuid", str(u) + "\n"])
    ),
    "source_id": edge_text,
    "source_version": st.sampled_from([-1, "5", 5.0, True, None, 2**63 - 1, 2**63]),
    "occurred_at": st.sampled_from(
        [
            "2026-12-01T10:00:00.123456+14:00",
            "2026-12-01T10:00:00.1234567Z",
            "2026-12-01T10:00:00",
            "2026-12-01 10:00:00Z",
            "2026-12-01",
            "2026-12-01T10:00:00Z\n",
            1_764_583_200,
        ]
    ),
    "producer": st.sampled_from(["", "line\nbreak", "nul\x00", "x" * 256, "x" * 257]),
    "schema_version": st.sampled_from([1, True, 1.0, 2]),
    "label": st.one_of(st.sampled_from(["AstNode", "Intent", "IMPLEMENTED_BY"]), edge_text),
    "rel_type": st.one_of(st.sampled_from(["AstNode", "Intent", "IMPLEMENTED_BY"]), edge_text),
    "node_id": edge_text,
    "prop_name": st.one_of(st.sampled_from(["key", "type", "name", "x" * 128, "x" * 129]), edge_text),
    "prop_value": edge_values,
    "metadata": st.dictionaries(st.sampled_from(["a\x00", "lang"]), st.text(max_size=4), max_size=2),
}
VALID: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.uuids().map(str),
    "source_id": plain_names,
    "source_version": st.integers(0, 2**63 - 1),
    "occurred_at": st.just("2026-12-01T10:00:00Z"),
    "producer": st.just("tests"),
    "schema_version": st.just(1),
    "label": plain_names,
    "rel_type": plain_names,
    "node_id": plain_names,
    "prop_name": plain_names.filter(lambda n: n not in {"key", "type", "source_id", "node_id", "source_version"}),
    "prop_value": valid_values,
    # No NUL and no lone surrogate in a metadata string: rules the schema cannot state
    # (SCHEMA_CANNOT_EXPRESS; hypothesis's characters() gives surrogates, text() alone does not).
    "metadata": st.dictionaries(
        plain_names,
        st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=4),
        max_size=2,
    ),
}


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event of any type with up to two kinds of field drawn from the edge values."""
    hostile = draw(st.sets(st.sampled_from(FIELDS), max_size=2))

    def pick(field: str) -> Any:
        return draw(EDGES[field] if field in hostile and draw(st.booleans()) else VALID[field])

    event_type = draw(
        st.sampled_from(["ast-graph.upserted", "ast-graph.deleted", "intent-link.upserted", "intent-link.deleted"])
    )
    intent = event_type.startswith("intent")
    document: dict[str, Any] = {
        "event_id": pick("event_id"),
        "event_type": event_type,
        "source_id": pick("event_id") if intent else pick("source_id"),
        "source_version": pick("source_version"),
        "occurred_at": pick("occurred_at"),
        "producer": pick("producer"),
    }
    if draw(st.booleans()):
        document["schema_version"] = pick("schema_version")
    if event_type == "ast-graph.upserted":
        # Unique node ids and edges between them: the rules a schema cannot express hold.
        ids = draw(
            st.lists(
                st.deferred(
                    lambda: (
                        VALID["node_id"] if "node_id" not in hostile else st.one_of(VALID["node_id"], EDGES["node_id"])
                    )
                ),
                min_size=1,
                max_size=4,
                unique=True,
            )
        )
        nodes = [{"id": i, "type": pick("label"), "properties": {pick("prop_name"): pick("prop_value")}} for i in ids]
        pairs = draw(st.lists(st.tuples(st.sampled_from(ids), st.sampled_from(ids)), max_size=3, unique=True))
        edges = [{"source": s, "target": t, "type": pick("rel_type")} for s, t in pairs]
        edges = list({(e["source"], e["type"], e["target"]): e for e in edges}.values())
        document["graph"] = {"nodes": nodes, "edges": edges, "metadata": pick("metadata")}
    if event_type == "intent-link.upserted":
        document["ast_nodes"] = [{"source_id": pick("source_id"), "node_id": pick("node_id")}]
    return document
