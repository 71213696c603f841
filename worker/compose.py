"""The composition root: stores and components built from the settings, in one place.

Everything that opens a store (the worker, the library, the CLI, the ops commands, the
bench) comes here, so the settings are read once and each component receives only the
values it uses. Defaults that depend on the graph backend are resolved here too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from worker.config import GraphSettings, Settings
from worker.consume.record_batches import MAX_HEADER_BYTES, MAX_KEY_BYTES, ReadLimits
from worker.consume.runner import RunnerLimits
from worker.errors import AccessRefused, DatabaseMissing
from worker.ports import GraphBackend
from worker.refusals import PROTOCOL_MISMATCH, causes, speaks_tls
from worker.stores.neo4j_shapes import store_names_for
from worker.stores.postgres import PostgresRelationalStore

T = TypeVar("T")


def batches_in_flight(settings: Settings, server_default: int = 1) -> int:
    """``worker.batches_in_flight``, or the graph server's own figure when it is unset.

    ``server_default`` is ``GraphBackend.parallel_batches()``: two on FalkorDB and Neo4j
    5.26+, which write two batches side by side faster; one over Bolt on ArcadeDB, where
    two halved throughput and raced on label creation.
    """
    if settings.worker.batches_in_flight is not None:
        return settings.worker.batches_in_flight
    return server_default


# Graph rows per batch when worker.transaction_size is unset. FalkorDB: every write query
# merges pending matrix entries at a cost that grows with the graph, so fewer, larger
# queries go further (2.1M nodes: 53.9k rows/s at 4000 against 38.2k at 1000 and 43.9k at
# 8000, whose longer queries also held lookups longer). Bolt: the seed's 1000 (Neo4j 5.26
# measured best at 5000, and deploy/ and compose set it; on ArcadeDB 2000 was no faster).
TRANSACTION_SIZES = {"neo4j": 1000, "falkordb": 4000}


def transaction_size(settings: Settings) -> int:
    """``worker.transaction_size``, or the graph backend's own figure when it is unset."""
    if settings.worker.transaction_size is not None:
        return settings.worker.transaction_size
    return TRANSACTION_SIZES[settings.graph.backend]


def runner_limits(settings: Settings, parallel_batches: int = 1, server_agent: str = "") -> RunnerLimits:
    """The consumer loop's values, with the graph server's defaults (``parallel_batches``) resolved.

    ``server_agent``: what the graph server calls itself; a server that refuses names the
    contract allows (ArcadeDB) has such events refused at decode time.
    """
    worker = settings.worker
    return RunnerLimits(
        topic_pattern=settings.kafka.consumed_pattern(),
        transaction_size=transaction_size(settings),
        linger_s=worker.linger_ms / 1000,
        batches_in_flight=batches_in_flight(settings, parallel_batches),
        max_poll_records=settings.kafka.max_poll_records,
        max_event_bytes=worker.max_event_bytes,
        max_nodes_per_graph=worker.max_nodes_per_graph,
        # FalkorDB cannot store a NUL in a string: such a graph is refused at decode time.
        strings_may_hold_nul=settings.graph.backend != "falkordb",
        store_names=store_names_for(server_agent),
        decode_processes=worker.decode_processes,
        retry_max_s=worker.retry_max_s,
    )


def read_limits(settings: Settings) -> ReadLimits:
    """What one record and one fetched batch may cost the consumer's memory (see README: memory)."""
    return ReadLimits(
        max_value_bytes=settings.worker.max_event_bytes,
        # Room for one record of the largest size (event, key and headers) with others beside it.
        max_batch_bytes=2 * settings.worker.max_event_bytes + MAX_KEY_BYTES + MAX_HEADER_BYTES,
        fetch_budget=settings.kafka.max_partition_fetch_bytes,
    )


def connect_graph(settings: GraphSettings, transaction_size: int = 1000) -> GraphBackend:
    """The configured backend's store (rows per statement: ``transaction_size``); connections open lazily."""
    if settings.backend == "falkordb":
        # Imported here: a Neo4j deployment needs no FalkorDB client loaded, and vice versa.
        from worker.stores.falkordb import FalkorDBGraphStore  # noqa: PLC0415

        return FalkorDBGraphStore.connect(settings, transaction_size)
    from worker.stores.neo4j import Neo4jGraphStore  # noqa: PLC0415

    return Neo4jGraphStore.connect(settings, transaction_size)


def open_graph(settings: Settings) -> GraphBackend:
    """The graph store these settings name, writing ``transaction_size(settings)`` rows a statement."""
    return connect_graph(settings.graph, transaction_size(settings))


_GRAPH_DRIVERS = ("neo4j", "redis", "falkordb")
_DEFAULT_PORTS = {"bolt": 7687, "neo4j": 7687, "redis": 6379, "rediss": 6379, "falkor": 6379, "falkors": 6379}


def _connection_failure(exc: BaseException) -> bool:
    """A graph driver's connection that broke or never answered (not a missing database, not PostgreSQL's)."""
    chain = list(causes(exc))
    if isinstance(exc, DatabaseMissing) or not any(type(c).__module__.startswith(_GRAPH_DRIVERS) for c in chain):
        return False
    return any(
        isinstance(cause, ConnectionError | TimeoutError | EOFError)
        or (type(cause).__module__.startswith(_GRAPH_DRIVERS) and "Unavailable" in type(cause).__name__)
        or (type(cause).__module__.startswith("redis") and type(cause).__name__ in {"ConnectionError", "TimeoutError"})
        for cause in chain
    )


async def graph_transport_refusal(settings: GraphSettings, exc: BaseException) -> AccessRefused | None:
    """After ``exc`` broke a connection: a TLS URI on a plain port, or a plain URI on a TLS port; else None.

    Drivers report either as a reset or a timeout, like an outage, and the worker would wait
    for ever; one TLS handshake of our own tells them apart.
    """
    parts = urlsplit(settings.uri)
    if parts.hostname is None or parts.scheme == "unix" or not _connection_failure(exc):
        return None
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme.partition("+")[0], 0)
    tls = await speaks_tls(parts.hostname, port)
    wants_tls = settings.uses_tls or parts.scheme.endswith("+ssc")
    if tls is None or tls == wants_tls:
        return None
    server = "the graph store (FalkorDB)" if settings.backend == "falkordb" else "the graph store (Bolt)"
    where = f"{parts.hostname}:{port}"
    detail = f"{where} speaks TLS" if tls else f"{where} does not speak TLS"
    return AccessRefused(
        server, "GPM_GRAPH__URI", PROTOCOL_MISMATCH, f"{detail}, the URI's scheme {parts.scheme}:// does not"
    )


async def open_relational(settings: Settings) -> PostgresRelationalStore:
    """The PostgreSQL store's pool (StoreUnavailable or ConfigError if it cannot open)."""
    return await PostgresRelationalStore.connect(settings.postgres)


async def using_relational(settings: Settings, work: Callable[[PostgresRelationalStore], Awaitable[T]]) -> T:
    """Open the PostgreSQL store, run ``work`` with it, and close it: one operator command's use."""
    relational = await open_relational(settings)
    try:
        return await work(relational)
    finally:
        await relational.close()


@dataclass(frozen=True, slots=True)
class Stores:
    """Both stores, opened together."""

    relational: PostgresRelationalStore
    graph: GraphBackend


@asynccontextmanager
async def open_stores(settings: Settings) -> AsyncIterator[Stores]:
    """Both stores for the length of the block; closed in reverse order."""
    relational = await open_relational(settings)
    try:
        graph = open_graph(settings)
        try:
            yield Stores(relational, graph)
        finally:
            await graph.close()
    finally:
        await relational.close()
