"""Neo4j adapter (official async driver, Neo4j 5): the graph side of a batch.

A batch is written in ONE explicit write transaction made of UNWIND statements of at
most ``chunk_size`` rows, laid out in the shape that suits the server (a statement per
label group, or a handful with dynamic labels on Neo4j 5.26+: ``neo4j_shapes``). A
failure rolls the whole transaction back, which is the graph side's compensation: no
partial batch is ever visible. Re-applying a batch after a crash converges to the same
graph: its sources' nodes are deleted first and written again.

The graph model is described in ``worker.stores.cypher``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, LiteralString

import neo4j
import structlog
from neo4j import exceptions as neo4j_errors

from worker import failpoints
from worker.config import GraphSettings
from worker.errors import (
    AccessRefused,
    DatabaseMissing,
    OperationRefused,
    StoreRejected,
    StoreUnavailable,
    translated,
)
from worker.ports import GraphChanges, GraphWriteStats, LinkRow
from worker.refusals import WRONG_CREDENTIALS, causes, tls_refusal
from worker.stores.cypher import BatchRows, batch_rows, checked_parameters, cypher_name, statement_span
from worker.stores.neo4j_shapes import (
    DYNAMIC_NODES,
    EdgeKinds,
    WriteShape,
    dynamic_nodes,
    edge_statement,
    node_statement,
    shape_for,
)

log = structlog.get_logger(__name__)

SCHEMA_STATEMENTS: tuple[LiteralString, ...] = (
    "CREATE CONSTRAINT gpm_ast_node_key IF NOT EXISTS FOR (n:AstNode) REQUIRE n.key IS UNIQUE",
    "CREATE INDEX gpm_ast_node_source IF NOT EXISTS FOR (n:AstNode) ON (n.source_id)",
    "CREATE CONSTRAINT gpm_intent_id IF NOT EXISTS FOR (i:Intent) REQUIRE i.id IS UNIQUE",
)


def _chunks(rows: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


SERVER = "the graph store (Bolt)"
TLS_SETTINGS = "GPM_GRAPH__URI and GPM_GRAPH__CA_FILE"


def _map_error(exc: Exception) -> Exception:
    if isinstance(exc, neo4j_errors.Neo4jError) and exc.code == "Neo.ClientError.Statement.AccessMode":
        return OperationRefused(f"a read query may not write: {exc.message}")
    if isinstance(exc, neo4j_errors.AuthError):
        # Waiting will not fix a wrong password: the start stops with this.
        return AccessRefused(SERVER, "GPM_GRAPH__USER/PASSWORD", WRONG_CREDENTIALS, exc.code or "")
    # The driver wraps the ssl module's error in BoltSecurityError (private) and that in
    # ServiceUnavailable; a reset inside it is a plain server on a TLS URI.
    in_handshake = any(type(c).__name__ == "BoltSecurityError" for c in causes(exc))
    if refused := tls_refusal(exc, in_handshake=in_handshake):
        return AccessRefused(SERVER, TLS_SETTINGS, *refused)
    if isinstance(exc, neo4j_errors.Neo4jError) and exc.code == "Neo.ClientError.Database.DatabaseNotFound":
        return DatabaseMissing(f"graph database not found (GPM_GRAPH__DATABASE): {exc.message}")
    if isinstance(exc, neo4j_errors.Neo4jError) and not exc.is_retryable():
        return StoreRejected(f"graph store rejected the write: {exc.code}: {exc.message}")
    return StoreUnavailable(f"graph store unavailable: {type(exc).__name__}: {exc}")


_DRIVER_ERRORS = (neo4j_errors.Neo4jError, neo4j_errors.DriverError, OSError)


def _translated() -> AbstractContextManager[None]:
    """Driver errors become the project's (StoreUnavailable, StoreRejected, DatabaseMissing)."""
    return translated(_DRIVER_ERRORS, _map_error)


class _BatchWriter:
    """Runs one batch's statements inside a transaction and adds up the counters."""

    def __init__(
        self, tx: neo4j.AsyncManagedTransaction, chunk_size: int, shape: WriteShape, edge_kinds: EdgeKinds
    ) -> None:
        self._tx = tx
        self._chunk_size = chunk_size
        self._shape = shape
        self._edge_kinds = edge_kinds
        self.stats: dict[str, int] = defaultdict(int)
        self.unresolved: tuple[LinkRow, ...] = ()

    async def run(self, query: LiteralString, rows: list[Any] | None = None, **params: object) -> list[dict[str, Any]]:
        """Run ``query`` once, or once per chunk of ``rows`` (UNWIND takes a list of anything)."""
        chunks: Iterable[list[Any] | None] = [None] if rows is None else _chunks(rows, self._chunk_size)
        records: list[dict[str, Any]] = []
        for chunk in chunks:
            if chunk is not None:
                params["rows"] = chunk
            with statement_span("neo4j", query, len(chunk) if chunk is not None else 0):
                result = await self._tx.run(query, params)
                records.extend([record.data() async for record in result])
                counters = (await result.consume()).counters
            self.stats["statements"] += 1
            # Dies after the first statement, with the transaction open and uncommitted.
            failpoints.hit("mid-graph")
            self.stats["nodes_written"] += counters.nodes_created
            self.stats["nodes_deleted"] += counters.nodes_deleted
            self.stats["edges_written"] += counters.relationships_created
            self.stats["relationships_deleted"] += counters.relationships_deleted
        return records

    async def write(self, rows: BatchRows) -> None:
        # Intent links into rewritten sources are re-attached from PostgreSQL at the end
        # (GraphChanges.relinks), so node identity across versions does not matter.
        if rows.rewritten:
            await self.run("UNWIND $rows AS id MATCH (n:AstNode {source_id: id}) DETACH DELETE n", rows.rewritten)
        if self._shape is WriteShape.DYNAMIC:
            await self._write_dynamic(rows)
        else:
            await self._write_grouped(rows)
        await self._write_intents(rows)

    # Every edge joins two nodes created just before it, in this transaction: their element
    # ids find them directly, where a key lookup goes through the unique index (measured:
    # edge statements 3x faster on ArcadeDB and on Neo4j 5.26).

    async def _write_grouped(self, rows: BatchRows) -> None:
        element_ids: dict[str, str] = {}
        for (label, names), nodes in rows.nodes.items():
            created = await self.run(*node_statement(label, names, nodes))
            element_ids.update((r["key"], r["id"]) for r in created)
        for (rel_type, names), edges in rows.edges.items():
            await self.run(*edge_statement(rel_type, names, edges, element_ids))

    async def _write_dynamic(self, rows: BatchRows) -> None:
        element_ids: dict[str, str] = {}
        nodes = dynamic_nodes(rows)
        if nodes:
            for created in await self.run(DYNAMIC_NODES, nodes):
                element_ids.update(zip(created["keys"], created["ids"], strict=True))
        for query, edges in self._edge_kinds.statements(rows.edges, element_ids):
            await self.run(query, edges)

    async def _write_intents(self, rows: BatchRows) -> None:
        if rows.gone_intents:
            await self.run("UNWIND $rows AS id MATCH (i:Intent {id: id}) DETACH DELETE i", rows.gone_intents)
        if rows.intents:
            await self.run(
                "UNWIND $rows AS r MERGE (i:Intent {id: r.id}) SET i.source_version = r.v "
                "WITH i OPTIONAL MATCH (i)-[e:IMPLEMENTED_BY]->() DELETE e",
                rows.intents,
            )
        if rows.links:
            await self.run(
                "UNWIND $rows AS r MATCH (i:Intent {id: r.intent}) MATCH (n:AstNode {key: r.key}) "
                "MERGE (i)-[:IMPLEMENTED_BY]->(n)",
                rows.links,
            )
            missing = await self.run(
                "UNWIND $rows AS r OPTIONAL MATCH (n:AstNode {key: r.key}) WITH r, n WHERE n IS NULL RETURN r.i AS i",
                rows.links,
            )
            self.unresolved = tuple(rows.wanted[r["i"]] for r in missing)


class Neo4jGraphStore:
    """The GraphStore port on the official Neo4j driver (Bolt)."""

    def __init__(self, driver: neo4j.AsyncDriver, settings: GraphSettings, chunk_size: int) -> None:
        self._driver = driver
        self._settings = settings
        self._chunk_size = chunk_size
        self._shape: WriteShape | None = None
        self._edge_kinds = EdgeKinds()

    @classmethod
    def connect(cls, settings: GraphSettings, chunk_size: int = 1000) -> Neo4jGraphStore:
        """Create the driver (connections open lazily, on first use)."""
        # The driver takes a CA of ours only with a plain scheme and encrypted=True, so the
        # scheme's "+s" / "+ssc" is spelt out here as the settings the driver would derive.
        scheme, _, rest = settings.uri.partition("://")
        plain_scheme, _, security = scheme.partition("+")
        trust: neo4j.TrustSystemCAs | neo4j.TrustAll | neo4j.TrustCustomCAs = neo4j.TrustSystemCAs()
        if security == "ssc":
            trust = neo4j.TrustAll()
        elif settings.ca_file is not None:
            trust = neo4j.TrustCustomCAs(str(settings.ca_file))
        driver = neo4j.AsyncGraphDatabase.driver(
            f"{plain_scheme}://{rest}",
            auth=(settings.user, settings.password.get_secret_value()),
            encrypted=bool(security),
            trusted_certificates=trust,
            max_connection_pool_size=settings.max_connection_pool_size,
            max_connection_lifetime=settings.max_connection_lifetime_s,
            connection_acquisition_timeout=settings.connection_acquisition_timeout_s,
            connection_timeout=settings.connection_timeout_s,
            max_transaction_retry_time=settings.max_transaction_retry_time_s,
        )
        return cls(driver, settings, chunk_size)

    async def migrate(self) -> None:
        """Constraints and indexes; schema statements run in auto-commit transactions."""
        with _translated():
            async with self._driver.session(database=self._settings.database) as session:
                for statement in SCHEMA_STATEMENTS:
                    await (await session.run(statement)).consume()

    async def apply(self, changes: GraphChanges) -> GraphWriteStats:
        """One managed write transaction; the driver retries transient errors itself."""
        if changes.empty:
            return GraphWriteStats()

        shape = await self.write_shape()
        rows = batch_rows(changes)

        @neo4j.unit_of_work(timeout=self._settings.transaction_timeout_s, metadata={"app": "graph-postgres-manager"})
        async def work(tx: neo4j.AsyncManagedTransaction) -> GraphWriteStats:
            writer = _BatchWriter(tx, self._chunk_size, shape, self._edge_kinds)
            await writer.write(rows)
            return GraphWriteStats(**writer.stats, unresolved_links=writer.unresolved)

        try:
            async with self._driver.session(database=self._settings.database) as session:
                if shape is WriteShape.DYNAMIC:
                    await self._plan(session, self._edge_kinds.unplanned(rows.edges))
                return await session.execute_write(work)
        except _DRIVER_ERRORS as exc:
            raise _map_error(exc) from exc
        except (ValueError, TypeError, OverflowError) as exc:
            # Raised by the driver while packing parameters (e.g. an integer beyond 64 bits):
            # the data, not the store, is at fault, and retrying cannot help.
            raise StoreRejected(f"graph store cannot take the data: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    async def _plan(session: neo4j.AsyncSession, texts: list[LiteralString]) -> None:
        """Plan new edge statements ahead, outside the write transaction (``EXPLAIN`` fills the plan cache).

        A batch of many new edge kinds spent most of its transaction planning (about 110 ms
        a 16-kind statement on Neo4j 5.26; 30 ms once explained ahead): one with 15,000
        kinds outlived the transaction timeout and was retried for minutes.
        """
        if texts:
            started = time.monotonic()
            for text in texts:
                await (await session.run("EXPLAIN " + text, {"rows": []})).consume()
            log.info("planned new edge statements", statements=len(texts), seconds=round(time.monotonic() - started, 2))

    async def write_shape(self) -> WriteShape:
        """The statements this server takes best, from its agent, asked once (or the setting)."""
        if self._shape is None:
            if self._settings.write_shape == "grouped":
                self._shape = WriteShape.GROUPED
            else:
                agent = await self.server_agent()
                self._shape = shape_for(agent)
                log.info("graph write shape", shape=self._shape.value, server=agent)
        return self._shape

    async def parallel_batches(self) -> int:
        """Two on Neo4j 5.26+ (measured 13.5k against 11.5k nodes/s); one on ArcadeDB, where two raced on labels."""
        return 2 if await self.write_shape() is WriteShape.DYNAMIC else 1

    async def query(self, cypher: LiteralString, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a query and return plain dicts."""
        checked = checked_parameters(params)
        with _translated():
            async with self._driver.session(database=self._settings.database) as session:
                result = await session.run(cypher, checked)
                return [record.data() async for record in result]

    async def read_query(self, cypher: LiteralString, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a query in a read transaction; one that writes is rolled back and refused.

        Neo4j refuses a write in a read transaction by itself; the counters check holds on
        servers that do not (ArcadeDB), since the refusal then rolls the transaction back.
        """
        checked = checked_parameters(params)

        async def work(tx: neo4j.AsyncManagedTransaction) -> list[dict[str, Any]]:
            result = await tx.run(cypher, checked)
            rows = [record.data() async for record in result]
            if (await result.consume()).counters.contains_updates:
                raise OperationRefused("a read query may not write (it was rolled back)")
            return rows

        with _translated():
            async with self._driver.session(database=self._settings.database) as session:
                return await session.execute_read(work)

    # Snapshots (backup, restore, export). Node kinds are the service's own labels with
    # their unique property; pages follow that property's order, so dumps are repeatable.

    async def nodes(self, label: str, key: str, page_size: int) -> AsyncIterator[list[dict[str, Any]]]:
        """All nodes of ``label`` in ``key`` order, in pages: {"labels", "props"} rows.

        One query, streamed by the driver ``page_size`` records at a time: keyset pages
        (``WHERE key > $after ... LIMIT``) cost ArcadeDB a scan and a sort each, which
        made a dump quadratic (measured: 14 pages of 66k nodes, 13.7 s against 4.9 s).
        """
        label, key = cypher_name(label), cypher_name(key)
        query: LiteralString = (
            "MATCH (n:" + label + ") RETURN labels(n) AS labels, properties(n) AS props ORDER BY n." + key
        )
        with _translated():
            async with self._driver.session(database=self._settings.database, fetch_size=page_size) as session:
                result = await session.run(query)
                page: list[dict[str, Any]] = []
                async for record in result:
                    page.append(record.data())
                    if len(page) == page_size:
                        yield page
                        page = []
                if page:
                    yield page

    async def edges_from(self, label: str, key: str, ids: list[str]) -> list[dict[str, Any]]:
        """Relationships from these nodes to AST nodes: start id, type, end key, properties."""
        label, key = cypher_name(label), cypher_name(key)
        return await self.query(
            "UNWIND $ids AS id MATCH (a:" + label + " {" + key + ": id})-[r]->(b:AstNode) "
            "RETURN a." + key + " AS start, type(r) AS type, b.key AS end, properties(r) AS props",
            {"ids": ids},
        )

    async def count(self, label: str) -> int:
        """How many nodes carry ``label``."""
        return int((await self.query("MATCH (n:" + cypher_name(label) + ") RETURN count(n) AS n"))[0]["n"])

    async def is_empty(self) -> bool:
        """True when the database holds no node at all."""
        return not await self.query("MATCH (n) RETURN 1 AS any LIMIT 1")

    async def create_nodes(self, labels: list[str], rows: list[dict[str, Any]]) -> int:
        """Create one node per property map, all with these labels, in one transaction."""
        names = ":".join(cypher_name(label) for label in labels)
        return (await self._write("UNWIND $rows AS r CREATE (n:" + names + ") SET n = r", rows)).nodes_created

    async def create_edges(self, start: str, key: str, rel_type: str, rows: list[dict[str, Any]]) -> int:
        """Create relationships ``start {key: r.start}`` -> ``AstNode {key: r.end}`` in one transaction."""
        query = (
            "UNWIND $rows AS r MATCH (a:" + cypher_name(start) + " {" + cypher_name(key) + ": r.start}) "
            "MATCH (b:AstNode {key: r.end}) CREATE (a)-[e:" + cypher_name(rel_type) + "]->(b) SET e = r.props"
        )
        return (await self._write(query, rows)).relationships_created

    async def delete_sources(self, source_ids: list[str]) -> int:
        """Delete these sources' AST nodes with their relationships; return how many nodes."""
        query: LiteralString = "UNWIND $rows AS id MATCH (n:AstNode {source_id: id}) DETACH DELETE n"
        return (await self._write(query, source_ids)).nodes_deleted

    async def delete_intents(self, intent_ids: list[str]) -> int:
        """Delete these intents' nodes with their links; return how many nodes."""
        query: LiteralString = "UNWIND $rows AS id MATCH (i:Intent {id: id}) DETACH DELETE i"
        return (await self._write(query, intent_ids)).nodes_deleted

    async def _write(self, query: LiteralString, rows: list[Any]) -> neo4j.SummaryCounters:
        async def work(tx: neo4j.AsyncManagedTransaction) -> neo4j.SummaryCounters:
            return (await (await tx.run(query, {"rows": rows})).consume()).counters

        with _translated():
            async with self._driver.session(database=self._settings.database) as session:
                return await session.execute_write(work)

    async def ping(self) -> None:
        """A trivial query on the configured database."""
        await self.query("RETURN 1 AS ok")

    async def probe_write(self) -> None:
        """Create an AST node in a transaction that is rolled back: raise unless writes are allowed."""
        with _translated():
            async with self._driver.session(database=self._settings.database) as session:
                tx = await session.begin_transaction()
                try:
                    await (await tx.run("CREATE (n:AstNode {key: 'gpm-preflight'}) RETURN 1")).consume()
                finally:
                    await tx.rollback()

    async def tuning_advice(self) -> tuple[str, ...]:
        """None: memory settings are the deployment's (docs/benchmark.md says what was measured)."""
        return ()

    async def server_agent(self) -> str:
        """The server's self-description, e.g. 'Neo4j/5.26.0'."""
        with _translated():
            info = await self._driver.get_server_info()
        return info.agent

    async def close(self) -> None:
        """Close the driver's pool."""
        await self._driver.close()
