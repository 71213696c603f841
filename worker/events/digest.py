"""The digest of a graph's nodes and edges, remembered where it was computed."""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import orjson

from worker.events.graph import GraphData

# Digests computed where a graph was decoded (a decoder process), for the graph objects the
# worker holds: plan_batch asks for each upsert's digest, and computing it again cost the
# consume loop half a second per 133k nodes. Weak: an entry goes with its graph.
_digests: dict[int, tuple[weakref.ref[GraphData], bytes]] = {}


def remember_digest(graph: GraphData, digest: bytes) -> None:
    """Tell ``graph_digest`` what ``graph``'s digest is (computed elsewhere from the same content)."""
    key = id(graph)
    _digests[key] = (weakref.ref(graph, lambda _: _digests.pop(key, None)), digest)


def graph_digest(graph: GraphData) -> bytes:
    """A digest of the graph's nodes and edges (metadata aside: PostgreSQL keeps it in every version).

    Node and edge order and property order do not matter: the same graph, re-published in
    another order, has the same digest.
    """
    known = _digests.get(id(graph))
    if known is not None and known[0]() is graph:
        return known[1]
    return digest_of(graph.nodes, graph.edges)


def digest_of(nodes: list[Any], edges: list[Any]) -> bytes:
    """``graph_digest`` of node and edge lists (raises on lists that are no graph: see _unchanged_upsert)."""
    in_order = sorted(nodes, key=lambda node: node["id"])
    edges_in_order = sorted(edges, key=lambda edge: (edge["source"], edge["type"], edge["target"]))
    return hashlib.blake2b(
        orjson.dumps([in_order, edges_in_order], option=orjson.OPT_SORT_KEYS), digest_size=16
    ).digest()
