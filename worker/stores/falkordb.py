"""FalkorDB adapter (native protocol, the ``falkordb`` asyncio client): the graph side of a batch.

FalkorDB has no multi-statement transactions, but one query is atomic: a query that fails
part-way is undone by the server (its undo log), and no other query sees it half done.
So a batch is ONE query: the same UNWIND statements as on Neo4j, chained with
``WITH count(*)`` (an aggregate always yields one row, so an empty step never stops the
chain). A failure leaves nothing behind, which is the graph side's compensation, and
every step is idempotent, so re-applying a batch after a crash converges to the same graph.
``chunk_size`` therefore does not split a batch here; ``transaction_size`` bounds it.

Its Bolt port is not usable for this (it crashed on 1000-row parameters in our trials).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import Any

from falkordb.asyncio.graph import AsyncGraph
from falkordb.edge import Edge
from falkordb.exceptions import SchemaVersionMismatchException
from falkordb.node import Node
from falkordb.path import Path
from redis import asyncio as redis
from redis import exceptions as redis_errors

from worker import failpoints
from worker.config import GraphSettings
from worker.errors import AccessRefused, OperationRefused, StoreRejected, StoreUnavailable, translated
from worker.ports import GraphChanges, GraphWriteStats
from worker.refusals import NOT_PERMITTED, WRONG_CREDENTIALS, tls_refusal
from worker.stores.cypher import NODE_FIELDS, BatchRows, batch_rows, checked_parameters, cypher_name, statement_span
from worker.stores.falkordb_params import UnstorableValue, cypher_key, with_parameters

# (label, property, unique): range indexes back every MATCH on these; unique ones also
# get a constraint, which FalkorDB builds on top of the index.
INDEXES = (("AstNode", "key", True), ("AstNode", "source_id", False), ("Intent", "id", True))
# FalkorDB grows every label and relation matrix by NODE_CREATION_BUFFER rows when its nodes
# outgrow them, and each growth first merges the matrix's pending entries (a pass over all
# of them). At the default, 16,384, those passes took a third of the server's CPU at 3M
# nodes; at 2^20 the 10M-node run went 48% faster and its lookup p95 fell from 612 to 214 ms,
# for the same resident memory (Redis's used_memory counts ~20 MB more per graph: see
# docs/benchmark.md). A load-time setting: the server's operator sets it.
RECOMMENDED_NODE_CREATION_BUFFER = 1 << 20
# Server errors that say "not now" rather than "not this data".
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "OOM")


SERVER = "the graph store (FalkorDB)"
# Replies that mean the credentials are wrong or missing (redis-py raises some as ResponseError).
_CREDENTIAL_REPLIES = ("WRONGPASS", "NOAUTH", "invalid username-password")


def _map_error(exc: Exception) -> Exception:
    # A wrong password is an operator's problem that waiting will not fix: the start stops
    # with it. So does an ACL refusal (NOPERM; redis-py drops that code from the message, so
    # it is told by its class): never the data's fault, so after a start it is retried and
    # reported as a refusal, not a rejected batch whose events would be dead-lettered.
    if isinstance(exc, redis_errors.AuthenticationError) or (
        isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(_CREDENTIAL_REPLIES)
    ):
        return AccessRefused(SERVER, "GPM_GRAPH__USER/PASSWORD", WRONG_CREDENTIALS, str(exc).split(".")[0])
    if isinstance(exc, redis_errors.NoPermissionError):
        return AccessRefused(SERVER, "the ACL of GPM_GRAPH__USER", NOT_PERMITTED, str(exc))
    if refused := tls_refusal(exc):
        return AccessRefused(SERVER, "GPM_GRAPH__URI and GPM_GRAPH__CA_FILE", *refused)
    if isinstance(exc, redis_errors.ResponseError) and not str(exc).startswith(_TRANSIENT_REPLIES):
        return StoreRejected(f"graph store rejected the write: {exc}")
    if isinstance(exc, UnstorableValue):
        return StoreRejected(f"graph store cannot take the data: {exc}")
    return StoreUnavailable(f"graph store unavailable: {type(exc).__name__}: {exc}")


_CLIENT_ERRORS = (redis_errors.RedisError, SchemaVersionMismatchException, UnstorableValue, OSError)


def _translated() -> AbstractContextManager[None]:
    """Client errors become the project's (StoreUnavailable, StoreRejected)."""
    return translated(_CLIENT_ERRORS, _map_error)


def _plain(value: Any) -> Any:  # noqa: ANN401 - whatever a result cell holds
    """Result cells as plain Python, like the Neo4j driver's ``record.data()``."""
    if isinstance(value, Node | Edge):
        return dict(value.properties)
    if isinstance(value, Path):
        return [_plain(n) for n in value.nodes()]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _BatchQuery:
    """One batch as one chained query: its text, its parameters and how many steps."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.params: dict[str, Any] = {}

    def add(self, row: str, rows: list[Any], clause: str) -> None:
        """``UNWIND <rows> AS <row> <clause>`` as a step; nothing when there are no rows.

        The clause is never searched or rewritten: property names written into it may hold
        any character but a backtick.
        """
        if not rows:
            return
        name = f"p{len(self.params)}"
        self.params[name] = rows
        self.steps.append(f"UNWIND ${name} AS {row} {clause}")

    def text(self, last: str) -> str:
        """The chained query ending with ``last``."""
        chained = [f"{step} WITH count(*) AS _{n}" for n, step in enumerate(self.steps)]
        return " ".join([*chained, last])


def _properties(names: tuple[str, ...], offset: int = 0) -> str:
    """``{`name`: v[i], ...}``: a row's values named in the query text, once per group."""
    return "{" + ", ".join(f"{cypher_key(name)}: v[{offset + i}]" for i, name in enumerate(names)) + "}"


def _batch_query(rows: BatchRows) -> _BatchQuery:
    query = _BatchQuery()
    query.add("id", rows.rewritten, "MATCH (n:AstNode {source_id: id}) DETACH DELETE n")
    for (label, names), nodes in rows.nodes.items():
        properties = _properties((*NODE_FIELDS, *names))
        query.add("v", nodes, f"CREATE (n:AstNode:{cypher_name(label)} {properties})")
    for (rel_type, names), edges in rows.edges.items():
        query.add(
            "v",
            edges,
            "MATCH (a:AstNode {key: v[0]}) MATCH (b:AstNode {key: v[1]}) "
            f"CREATE (a)-[e:{cypher_name(rel_type)} {_properties(names, offset=2)}]->(b)",
        )
    query.add("id", rows.gone_intents, "MATCH (i:Intent {id: id}) DETACH DELETE i")
    query.add(
        "r",
        rows.intents,
        "MERGE (i:Intent {id: r.id}) SET i.source_version = r.v "
        "WITH i OPTIONAL MATCH (i)-[e:IMPLEMENTED_BY]->() DELETE e",
    )
    query.add(
        "r",
        rows.links,
        "MATCH (i:Intent {id: r.intent}) MATCH (n:AstNode {key: r.key}) MERGE (i)-[:IMPLEMENTED_BY]->(n)",
    )
    return query


class FalkorDBGraphStore:
    """The GraphStore port on FalkorDB's native protocol; ``settings.database`` names the graph."""

    def __init__(self, client: redis.Redis, settings: GraphSettings) -> None:
        self._client = client
        self._settings = settings
        self._graph = AsyncGraph(client, settings.database)
        self._timeout_ms = int(settings.transaction_timeout_s * 1000)

    @classmethod
    def connect(cls, settings: GraphSettings, chunk_size: int = 1000) -> FalkorDBGraphStore:  # noqa: ARG003 - see module doc
        """Create the client (connections open lazily, on first use).

        Not through ``falkordb.asyncio.FalkorDB``: its constructor asks the server, with a
        blocking call on the event loop, whether it is a cluster, and fails when the server
        is down. A standalone server is what this adapter supports.
        """
        password = settings.password.get_secret_value()
        url = settings.uri
        for alias, scheme in (("falkor://", "redis://"), ("falkors://", "rediss://")):
            if url.startswith(alias):
                url = scheme + url.removeprefix(alias)
        client = redis.from_url(
            url,
            decode_responses=True,
            username=settings.user if password else None,
            password=password or None,
            max_connections=settings.max_connection_pool_size,
            socket_connect_timeout=settings.connection_timeout_s,
            # A batch's query may take up to its server-side timeout; then some slack.
            socket_timeout=settings.transaction_timeout_s + settings.connection_timeout_s,
            health_check_interval=30,
            # A private CA for rediss:// (the settings refuse it with a plain scheme).
            **({"ssl_ca_certs": str(settings.ca_file)} if settings.ca_file is not None else {}),
        )
        return cls(client, settings)

    async def _run(self, query: str, params: dict[str, Any] | None = None) -> Any:  # noqa: ANN401 - the client's QueryResult is untyped
        checked = checked_parameters(params)
        with _translated():  # UnstorableValue from a parameter's value included
            return await self._graph.query(with_parameters(query, checked), timeout=self._timeout_ms)

    async def migrate(self) -> None:
        """Range indexes, then unique constraints on them (waited for until operational)."""
        for label, prop, _ in INDEXES:
            try:
                await self._run(f"CREATE INDEX FOR (n:{label}) ON (n.{prop})")
            except StoreRejected as exc:
                if "already indexed" not in str(exc):
                    raise
        for label, prop, unique in INDEXES:
            if not unique:
                continue
            with _translated():
                try:
                    await self._graph.create_node_unique_constraint(label, prop)
                except redis_errors.ResponseError as exc:
                    if "already exists" not in str(exc):
                        raise
        await self._constraints_operational()

    async def _constraints_operational(self, timeout_s: float = 60.0) -> None:
        # FalkorDB builds a constraint in the background; until then it does not hold.
        deadline = time.monotonic() + timeout_s
        while True:
            with _translated():
                constraints = await self._graph.list_constraints()
            if all(c["status"] == "OPERATIONAL" for c in constraints):
                return
            if any(c["status"] == "FAILED" for c in constraints):
                msg = f"graph store could not build its unique constraints (duplicates present?): {constraints}"
                raise StoreRejected(msg)
            if time.monotonic() > deadline:
                msg = f"graph store constraints not operational after {timeout_s:.0f} s: {constraints}"
                raise StoreUnavailable(msg)
            await asyncio.sleep(0.1)

    async def apply(self, changes: GraphChanges) -> GraphWriteStats:
        """One atomic query for the whole batch; unresolved links come back in the same query."""
        if changes.empty:
            return GraphWriteStats()
        rows = batch_rows(changes)
        query = _batch_query(rows)
        query.params["links"] = rows.links
        text = query.text(
            "UNWIND $links AS r OPTIONAL MATCH (n:AstNode {key: r.key}) WITH r, n WHERE n IS NULL "
            "RETURN collect(r.i) AS missing"
        )
        # The query has not reached the server: the batch is not applied at all.
        failpoints.hit("mid-graph")
        with statement_span("falkordb", text, sum(len(v) for v in query.params.values())):
            result = await self._run(text, query.params)
        missing = result.result_set[0][0] if result.result_set else []
        return GraphWriteStats(
            nodes_written=int(result.nodes_created),
            edges_written=int(result.relationships_created),
            nodes_deleted=int(result.nodes_deleted),
            relationships_deleted=int(result.relationships_deleted),
            statements=len(query.steps) + 1,
            unresolved_links=tuple(rows.wanted[i] for i in missing),
        )

    async def query(self, cypher: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a query and return plain dicts (nodes and relationships as their properties)."""
        result = await self._run(cypher, params)
        names = [column[1] for column in result.header]
        return [dict(zip(names, map(_plain, row), strict=True)) for row in result.result_set]

    async def read_query(self, cypher: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a query as GRAPH.RO_QUERY: the server refuses any write."""
        checked = checked_parameters(params)
        try:
            with _translated():
                result = await self._graph.ro_query(with_parameters(cypher, checked), timeout=self._timeout_ms)
        except StoreRejected as exc:
            if "read-only" in str(exc).lower() or "RO_QUERY" in str(exc):
                raise OperationRefused(f"a read query may not write: {exc}") from exc
            raise
        names = [column[1] for column in result.header]
        return [dict(zip(names, map(_plain, row), strict=True)) for row in result.result_set]

    # Snapshots (backup, restore, export); see SnapshotGraph.

    async def nodes(self, label: str, key: str, page_size: int) -> AsyncIterator[list[dict[str, Any]]]:
        """All nodes of ``label`` in ``key`` order, in pages: {"labels", "props"} rows.

        FalkorDB has no cursors and no ordered index scan, so keyset pages would sort the
        rest of the label each time; the keys are read (and sorted) once, then the nodes
        are fetched page by page through the unique index.
        """
        label, key = cypher_name(label), cypher_name(key)
        keys = [r["k"] for r in await self.query(f"MATCH (n:{label}) RETURN n.{key} AS k ORDER BY k")]
        for start in range(0, len(keys), page_size):
            page = keys[start : start + page_size]
            rows = await self.query(
                f"UNWIND $keys AS k MATCH (n:{label} {{{key}: k}}) RETURN labels(n) AS labels, properties(n) AS props",
                {"keys": page},
            )
            yield rows

    async def edges_from(self, label: str, key: str, ids: list[str]) -> list[dict[str, Any]]:
        """Relationships from these nodes to AST nodes: start id, type, end key, properties."""
        label, key = cypher_name(label), cypher_name(key)
        return await self.query(
            f"UNWIND $ids AS id MATCH (a:{label} {{{key}: id}})-[r]->(b:AstNode) "
            f"RETURN a.{key} AS start, type(r) AS type, b.key AS end, properties(r) AS props",
            {"ids": ids},
        )

    async def count(self, label: str) -> int:
        """How many nodes carry ``label``."""
        return int((await self.query(f"MATCH (n:{cypher_name(label)}) RETURN count(n) AS n"))[0]["n"])

    async def is_empty(self) -> bool:
        """True when the graph holds no node at all."""
        return not await self.query("MATCH (n) RETURN 1 AS any LIMIT 1")

    async def create_nodes(self, labels: list[str], rows: list[dict[str, Any]]) -> int:
        """Create one node per property map, all with these labels, in one query."""
        names = ":".join(cypher_name(label) for label in labels)
        result = await self._run(f"UNWIND $rows AS r CREATE (n:{names}) SET n = r", {"rows": rows})
        return int(result.nodes_created)

    async def create_edges(self, start: str, key: str, rel_type: str, rows: list[dict[str, Any]]) -> int:
        """Create relationships ``start {key: r.start}`` -> ``AstNode {key: r.end}`` in one query."""
        query = (
            f"UNWIND $rows AS r MATCH (a:{cypher_name(start)} {{{cypher_name(key)}: r.start}}) "
            f"MATCH (b:AstNode {{key: r.end}}) CREATE (a)-[e:{cypher_name(rel_type)}]->(b) SET e = r.props"
        )
        return int((await self._run(query, {"rows": rows})).relationships_created)

    async def delete_sources(self, source_ids: list[str]) -> int:
        """Delete these sources' AST nodes with their relationships; return how many nodes."""
        result = await self._run(
            "UNWIND $rows AS id MATCH (n:AstNode {source_id: id}) DETACH DELETE n", {"rows": source_ids}
        )
        return int(result.nodes_deleted)

    async def delete_intents(self, intent_ids: list[str]) -> int:
        """Delete these intents' nodes with their links; return how many nodes."""
        result = await self._run("UNWIND $rows AS id MATCH (i:Intent {id: id}) DETACH DELETE i", {"rows": intent_ids})
        return int(result.nodes_deleted)

    async def ping(self) -> None:
        """A trivial query on the configured graph."""
        await self.query("RETURN 1 AS ok")

    async def probe_write(self) -> None:
        """Create an AST node in a query that then fails, so it is undone: raise unless writes are allowed."""
        try:
            await self._run("CREATE (n:AstNode {key: 'gpm-preflight'}) WITH n RETURN 1 / 0 AS undone")
        except StoreRejected as exc:
            if "Division by zero" not in str(exc):
                raise

    async def parallel_batches(self) -> int:
        """Two: one batch's PostgreSQL steps overlap the other's graph write (docs/benchmark.md)."""
        return 2

    async def tuning_advice(self) -> tuple[str, ...]:
        """NODE_CREATION_BUFFER below the recommended value; nothing if the server will not say."""
        try:
            # redis-py leaves execute_command untyped; the reply is [name, value].
            reply = await self._client.execute_command("GRAPH.CONFIG", "GET", "NODE_CREATION_BUFFER")  # type: ignore[no-untyped-call]
            value = int(reply[1])
        except (redis_errors.RedisError, ValueError, TypeError, IndexError):
            # Advice only: a user without GRAPH.CONFIG rights (NOPERM, a refusal through
            # _map_error) or a server without the setting gets none, and starts.
            return ()
        if value >= RECOMMENDED_NODE_CREATION_BUFFER:
            return ()
        advice = (
            f"FalkorDB NODE_CREATION_BUFFER is {value:,}: bulk writes slow down as the graph grows; "
            f"load the module with NODE_CREATION_BUFFER {RECOMMENDED_NODE_CREATION_BUFFER} (docs/benchmark.md)"
        )
        return (advice,)

    async def server_agent(self) -> str:
        """The server's self-description, e.g. 'FalkorDB/4.16.3' (from its module version)."""
        with _translated():
            modules = await self._client.module_list()
        for module in modules:
            if module.get("name") == "graph":
                version = int(module["ver"])
                return f"FalkorDB/{version // 10000}.{version // 100 % 100}.{version % 100}"
        return "unknown (the graph module is not loaded)"

    async def close(self) -> None:
        """Close the client's pool."""
        await self._client.aclose(close_connection_pool=True)
