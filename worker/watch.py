"""After the start: a broker that refuses this worker is reported as such, not retried in silence.

aiokafka reconnects by itself for ever and logs each failure; a password rotated on the
broker, or a certificate renewed under another CA, then reads in the logs like an outage.
``BrokerWatch`` listens for aiokafka's error log records, and on one runs the broker check
(``worker/broker.py``): a refusal is logged once at error level with its reason and the
setting to fix, shown by ``/readyz`` and by the ``gpm_server_refused`` gauge, and checked
again every ``recheck_s`` until the broker takes the worker back. Costs nothing while the
broker answers: no log records, no checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import structlog

from worker.broker import check_broker
from worker.config import KafkaSettings
from worker.errors import AccessRefused, GpmError
from worker.telemetry import metrics

log = structlog.get_logger(__name__)
# At most: a check every MIN_INTERVAL_S whatever aiokafka logs meanwhile, and one every
# RECHECK_S while refused (both shorter when the worker's retry_max_s is).
MIN_INTERVAL_S = 5.0
RECHECK_S = 10.0


class _Nudge(logging.Handler):
    """Sets an event on the worker's loop when aiokafka logs an error (from any thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        super().__init__(level=logging.ERROR)
        self._loop = loop
        self._event = event

    def emit(self, record: logging.LogRecord) -> None:  # noqa: ARG002 - any error record is a nudge
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._event.set)


class BrokerWatch:
    """Tells a refusing broker from a missing one while the worker runs; ``refused`` is the latest finding."""

    def __init__(self, kafka: KafkaSettings, retry_max_s: float = RECHECK_S) -> None:
        self._kafka = kafka
        self._recheck_s = min(RECHECK_S, retry_max_s)
        self._min_interval_s = min(MIN_INTERVAL_S, retry_max_s)
        self._nudged = asyncio.Event()
        self.refused: AccessRefused | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: check the broker when aiokafka logs an error, and while it refuses."""
        handler = _Nudge(asyncio.get_running_loop(), self._nudged)
        logger = logging.getLogger("aiokafka")
        logger.addHandler(handler)
        try:
            while not stopping.is_set():
                await self._next_reason_to_check(stopping)
                if stopping.is_set():
                    return
                self._nudged.clear()
                await self._check()
                await _wait(stopping, self._min_interval_s)
        finally:
            logger.removeHandler(handler)

    async def _next_reason_to_check(self, stopping: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(self._nudged.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(
                waits, timeout=self._recheck_s if self.refused else None, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _check(self) -> None:
        try:
            await check_broker(self._kafka)
        except AccessRefused as exc:
            if self.refused is None or str(self.refused) != str(exc):
                # At error level without a traceback: the reason is the whole story.
                log.error(  # noqa: TRY400
                    "the Kafka broker refuses this worker", reason=exc.reason, setting=exc.setting, error=str(exc)
                )
            self.refused = exc
            metrics.refused["kafka"] = exc.reason
            return
        except GpmError:
            return  # unreachable: an outage, which aiokafka's own retries wait out
        if self.refused is not None:
            log.info("the Kafka broker takes this worker again")
        self.refused = None
        metrics.refused.pop("kafka", None)


async def _wait(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
