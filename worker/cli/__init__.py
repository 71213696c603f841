"""The ``gpm`` command line: run, dev, migrate, publish, status, replay, dlq, outbox, check, stats, schemas.

One module per group of commands; importing it registers its commands on ``app``.
"""

from __future__ import annotations

# In the order `gpm --help` lists them (registration order), not the alphabet's.
# isort: off
from worker.cli import service, operate, snapshots, dlq, outbox, dev
from worker.cli.common import app

# isort: on

__all__ = ["app", "dev", "dlq", "main", "operate", "outbox", "service", "snapshots"]


def main() -> None:
    """Entry point for ``python -m worker``."""
    app()
