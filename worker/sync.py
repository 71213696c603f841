"""A blocking face of the library, for scripts and code without an event loop.

Every call runs on one private event loop (``asyncio.Runner``) that lives as long as the
``with`` block, so the connection pools opened at the start serve every call::

    with SyncGraphPostgresManager(load_settings()) as gpm:
        gpm.store_ast_graph({"nodes": [{"id": "m", "type": "Module"}]}, "a.py")
        report = gpm.call(lambda m: m.check_data_consistency())

The common calls have their own methods; :meth:`SyncGraphPostgresManager.call` runs any
other method of :class:`GraphPostgresManager`. Not for use inside a running event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, LiteralString, Self, TypeVar
from uuid import UUID

from worker.config import Settings
from worker.errors import GpmError
from worker.events import AstNodeRef, GraphData
from worker.library import GraphPostgresManager, StoreResult, UnifiedQuery

T = TypeVar("T")


class SyncGraphPostgresManager:
    """GraphPostgresManager's calls, blocking."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._manager = GraphPostgresManager(settings)
        self._runner: asyncio.Runner | None = None

    def __enter__(self) -> Self:
        self._runner = asyncio.Runner()
        try:
            self._runner.run(self._manager.__aenter__())
        except BaseException:
            self._runner.close()
            self._runner = None
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is None:
            return
        try:
            self._runner.run(self._manager.close())
        finally:
            self._runner.close()
            self._runner = None

    def call(self, work: Callable[[GraphPostgresManager], Coroutine[Any, Any, T]]) -> T:
        """Run any of the async manager's methods: ``gpm.call(lambda m: m.get_storage_stats())``."""
        if self._runner is None:
            msg = "SyncGraphPostgresManager is not open: use `with SyncGraphPostgresManager(...) as gpm:`"
            raise GpmError(msg)
        return self._runner.run(work(self._manager))

    def store_ast_graph(
        self, graph: GraphData | Mapping[str, Any], source_id: str, *, version: int | None = None
    ) -> StoreResult:
        """See :meth:`GraphPostgresManager.store_ast_graph`."""
        return self.call(lambda m: m.store_ast_graph(graph, source_id, version=version))

    def link_intent_to_ast(self, intent_id: UUID, ast_nodes: Iterable[tuple[str, str] | AstNodeRef]) -> StoreResult:
        """See :meth:`GraphPostgresManager.link_intent_to_ast`."""
        return self.call(lambda m: m.link_intent_to_ast(intent_id, ast_nodes))

    def query_neo4j(self, cypher: LiteralString, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """See :meth:`GraphPostgresManager.query_neo4j`."""
        return self.call(lambda m: m.query_neo4j(cypher, params))

    def query_postgres(self, sql: str, *params: object) -> list[dict[str, Any]]:
        """See :meth:`GraphPostgresManager.query_postgres`."""
        return self.call(lambda m: m.query_postgres(sql, *params))

    def query_unified(self, query: UnifiedQuery) -> list[dict[str, Any]]:
        """See :meth:`GraphPostgresManager.query_unified`."""
        return self.call(lambda m: m.query_unified(query))

    def health_check(self) -> dict[str, str]:
        """See :meth:`GraphPostgresManager.health_check`."""
        return self.call(lambda m: m.health_check())
