"""Start and stop the three embedded services together, and derive worker settings."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog
from pydantic import SecretStr

from worker.config import (
    GraphBackendName,
    GraphSettings,
    HealthSettings,
    KafkaSettings,
    PostgresSettings,
    Settings,
    WorkerSettings,
)
from worker.devstack.arcadedb import ArcadeDBServer
from worker.devstack.broker import ExternalBroker, TansuBroker
from worker.devstack.falkordb import FalkorDBServer
from worker.devstack.postgres import EmbeddedPostgres

log = structlog.get_logger(__name__)


class DevStack:
    """Broker + PostgreSQL + a graph store on 127.0.0.1; a context manager.

    The graph store serves the chosen backend: ArcadeDB's Bolt server for the Neo4j
    adapter (Neo4j itself is not on PyPI), or FalkorDB.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        keep: bool = False,
        graph_backend: GraphBackendName = "neo4j",
        broker_address: str | None = None,
    ) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="gpm-devstack-"))
        self._keep = keep
        # A broker of the caller's (a real Apache Kafka for a local check), or tansu.
        self.broker: TansuBroker | ExternalBroker = (
            ExternalBroker(broker_address) if broker_address else TansuBroker(self.workdir)
        )
        self.postgres = EmbeddedPostgres(self.workdir)
        self.graph_backend = graph_backend
        self.graph: ArcadeDBServer | FalkorDBServer = (
            FalkorDBServer(self.workdir) if graph_backend == "falkordb" else ArcadeDBServer(self.workdir)
        )

    def start(self) -> Self:
        """Start all three; the slowest (the JVM) starts first so the others overlap it."""
        started = time.monotonic()
        try:
            self.broker.start()
            self.postgres.start()
            self.graph.start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "local stack started",
            seconds=round(time.monotonic() - started, 1),
            kafka=self.broker.bootstrap_servers,
            graph=self.graph.uri,
            workdir=str(self.workdir),
        )
        return self

    def settings(self, **worker: object) -> Settings:
        """Worker settings pointing at this stack."""
        return Settings(
            kafka=KafkaSettings(bootstrap_servers=self.broker.bootstrap_servers),
            postgres=PostgresSettings(dsn=SecretStr(self.postgres.dsn)),
            graph=self.graph_settings(),
            worker=WorkerSettings.model_validate(worker),
            health=HealthSettings(host="127.0.0.1", port=0),
        )

    def graph_settings(self) -> GraphSettings:
        """Settings for this stack's graph store, on its default database (graph)."""
        if isinstance(self.graph, FalkorDBServer):
            return GraphSettings(backend="falkordb", uri=self.graph.uri, database="graph")
        return GraphSettings(uri=self.graph.uri, user="root", password=SecretStr(self.graph.password), database="graph")

    def namespace(self, name: str, **worker: object) -> Settings:
        """Settings on fresh databases named ``name`` (PostgreSQL and graph) and group ``gpm-<name>``.

        Synchronous (it runs its own event loop): from async code, call it in a thread.
        """
        if not name.isidentifier():
            msg = f"namespace name must be an identifier, got {name!r}"
            raise ValueError(msg)

        async def create_database() -> None:
            conn = await asyncpg.connect(self.postgres.dsn)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create_database())
        if isinstance(self.graph, ArcadeDBServer):
            self.graph.create_database(name)  # a FalkorDB graph is created by its first write
        base = self.settings(**worker)
        parts = urlsplit(self.postgres.dsn)
        dsn = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
        return base.model_copy(
            update={
                "postgres": base.postgres.model_copy(update={"dsn": SecretStr(dsn)}),
                "graph": base.graph.model_copy(update={"database": name}),
                "kafka": base.kafka.model_copy(update={"group_id": f"gpm-{name}"}),
            }
        )

    def stop(self) -> None:
        """Stop in reverse order and remove the work directory unless asked to keep it."""
        self.graph.stop()
        self.postgres.stop()
        self.broker.stop()
        if self._own_dir and not self._keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
