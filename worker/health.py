"""Kubernetes probes and Prometheus metrics on one small aiohttp server on the worker's loop.

- ``/livez``: the event loop answers and the consume loop has turned recently. Never the
  databases: a database outage must make the pod unready, not restart it.
- ``/readyz``: joined the consumer group and both stores answer a ping; the JSON body
  says which check failed.
- ``/metrics``: the worker's metrics (``worker/telemetry.py``), in Prometheus text format.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from worker.config import HealthSettings
from worker.errors import AccessRefused, ConfigError
from worker.telemetry import metrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Probes:
    """What the server asks the worker."""

    heartbeat: Callable[[], float]  # monotonic time of the consume loop's last turn
    joined: Callable[[], bool]
    ping_postgres: Callable[[], Awaitable[None]]
    ping_graph: Callable[[], Awaitable[None]]
    # The broker's refusal seen since the start (worker/watch.py), or None.
    broker_refused: Callable[[], AccessRefused | None] = lambda: None


class HealthServer:
    """The probe and metrics endpoints; ``port`` is the bound port once started."""

    def __init__(self, settings: HealthSettings, probes: Probes) -> None:
        self._settings = settings
        self._probes = probes
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        """Bind and serve in the background."""
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.host, self._settings.port)
        try:
            await site.start()
        except OSError as exc:  # a port in use, an address this host does not have or cannot resolve
            await self._runner.cleanup()
            where = f"{self._settings.host}:{self._settings.port}"
            msg = f"GPM_HEALTH__HOST / GPM_HEALTH__PORT: cannot listen on {where}: {exc.strerror or exc}"
            raise ConfigError(msg) from None
        self.port = self._runner.addresses[0][1]
        log.info("health server listening", host=self._settings.host, port=self.port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _livez(self, _: web.Request) -> web.Response:
        idle = time.monotonic() - self._probes.heartbeat()
        ok = idle < self._settings.liveness_timeout_s
        return web.json_response({"ok": ok, "consume_loop_idle_s": round(idle, 1)}, status=200 if ok else 503)

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, checks = await self._readiness()
        return web.json_response({"ok": ok, "checks": checks}, status=200 if ok else 503)

    async def _readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether this worker is ready, and each check's finding; also kept for the ``gpm_worker_ready`` gauge."""
        checks: dict[str, str] = {"group": "joined" if self._probes.joined() else "not joined"}
        if (broker := self._probes.broker_refused()) is not None:
            checks["kafka"] = broker.brief

        async def check(name: str, ping: Callable[[], Awaitable[None]]) -> None:
            try:
                await asyncio.wait_for(ping(), timeout=self._settings.check_timeout_s)
                checks[name] = "ok"
                metrics.refused.pop(name, None)
            except AccessRefused as exc:  # not an outage: say what to fix
                checks[name] = exc.brief
                metrics.refused[name] = exc.reason
            except Exception as exc:  # noqa: BLE001 - any failure means not ready; the reason is reported
                checks[name] = f"unavailable: {type(exc).__name__}"

        # Side by side: the answer takes one check_timeout_s at worst, within the probe's timeout.
        await asyncio.gather(check("postgres", self._probes.ping_postgres), check("graph", self._probes.ping_graph))
        ok = all(v in {"ok", "joined"} for v in checks.values())
        metrics.ready = int(ok)
        return ok, checks

    async def _metrics(self, _: web.Request) -> web.Response:
        # Readiness as of this scrape (two pings, bounded by check_timeout_s): where no kubelet
        # asks /readyz (docker-compose), the alert on gpm_worker_ready still has a fresh value.
        await self._readiness()
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
