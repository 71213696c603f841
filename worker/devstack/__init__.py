"""The embedded local stack: a Kafka-protocol broker, PostgreSQL and a Bolt graph server.

Each is a real server shipped in a PyPI wheel (the ``devstack`` extra), started as a
child process on free 127.0.0.1 ports, awaited until it answers, and stopped by PID.
Used by ``gpm dev``, the test fixtures and the benchmark.
"""

from worker.devstack.stack import DevStack

__all__ = ["DevStack"]
