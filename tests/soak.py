"""A long run on the embedded stack (``make soak``, not in CI): months of traffic, compressed.

Three `gpm run` replicas share the partitions while a producer publishes, every few seconds,
new versions of real standard-library graphs, deletes, Kafka tombstones, repeats, intent
links (some to nodes that come later or never) and now and then a hostile record. Replica B
is stopped (SIGTERM) and started again every 6 minutes, replica C killed (SIGKILL) every 9:
the group rebalances under load. Replica A runs throughout; its memory is sampled every 10 s.

At the end the producer stops, the group drains, and a fresh worker replays the same topics
into empty stores: both stores must equal that clean run's (the ledger of processed ids
aside, which retention may prune). Printed: the figures, per quarter of the run, and a
verdict; exit 1 when a check fails. Progress shows every minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.bench.ingest import rss_mb
from tests.factories import delete, link, unlink, upsert
from tests.faults.snapshots import snapshot
from tests.integration.conftest import Namespace, make_namespace
from worker.devjob import corpus
from worker.devstack import DevStack
from worker.devstack.process import free_port
from worker.events import AstGraphUpserted, Envelope, GraphData

ROUND_S = 5.0
# The shortest retention the settings allow, pruned every minute: a run past an hour prunes.
RETENTION_S = 3600
PRUNE_INTERVAL_S = 60
SOURCES = 150  # standard-library files cycled through versions
HOSTILE = (b"{not json", b'{"event_type": "ast-graph.upserted"}', b"\x00" * 64, "é".encode("latin-1") * 10)


@dataclass
class Replica:
    """One `gpm run` process, its health port and log; restarted with the same name."""

    name: str
    ns: Namespace
    logs: Path
    process: asyncio.subprocess.Process | None = None
    port: int = 0
    starts: int = 0
    _log: IO[bytes] | None = None

    async def start(self) -> None:
        """Start (again) on a fresh health port, appending to its log."""
        self.port = free_port()
        self.starts += 1
        self._log = (self.logs / f"{self.name}.log").open("ab")
        env = self.ns.env(
            parked_report_interval_s="5",
            bookkeeping_retention_s=str(RETENTION_S),
            bookkeeping_prune_interval_s=str(PRUNE_INTERVAL_S),
        )
        env["GPM_HEALTH__PORT"] = str(self.port)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "run", env=env, stdout=self._log, stderr=asyncio.subprocess.STDOUT
        )

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal it and wait for its exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        code = await asyncio.wait_for(self.process.wait(), 120)
        if self._log is not None:
            self._log.close()
        return code


@dataclass
class Producer:
    """Versions, deletes, tombstones, repeats, intents and hostile records, from one seeded RNG."""

    ns: Namespace
    graphs: list[AstGraphUpserted]
    rng: random.Random = field(default_factory=lambda: random.Random(27))
    versions: dict[str, int] = field(default_factory=dict)
    intents: dict[uuid.UUID, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=lambda: {"graph": 0, "intent": 0, "hostile": 0, "tombstone": 0})

    async def round(self) -> None:
        """One round: eight sources changed one way or another, one intent, sometimes a hostile record."""
        events: list[Envelope] = []
        for base in self.rng.sample(self.graphs, 8):
            source = base.source_id
            version = self.versions.get(source, 0) + 1
            roll = self.rng.random()
            if roll < 0.12 and source in self.versions:
                events.append(delete(source, version))
            elif roll < 0.2 and source in self.versions:
                await self.ns.publish_raw(self.ns.graph_topic, None, key=source.encode())
                self.sent["tombstone"] += 1
                continue  # a tombstone takes no version: the next upsert's goes on from the last
            elif roll < 0.25 and source in self.versions:
                version -= 1  # an older or equal version again: superseded or a duplicate
                events.append(upsert(source, version, self._graph(base, version)))
            else:
                events.append(upsert(source, version, self._graph(base, version)))
            self.versions[source] = max(version, self.versions.get(source, 0))
        await self.ns.publish(self.ns.graph_topic, events)
        self.sent["graph"] += len(events)
        await self._intent()
        if self.rng.random() < 0.05:
            await self.ns.publish_raw(self.ns.graph_topic, self.rng.choice(HOSTILE), key=b"hostile")
            self.sent["hostile"] += 1

    async def _intent(self) -> None:
        intent = self.rng.choice([*self.intents, uuid.uuid4()] if self.intents else [uuid.uuid4()])
        version = self.intents.get(intent, 0) + 1
        self.intents[intent] = version
        if self.rng.random() < 0.1 and version > 1:
            event: Envelope = unlink(intent, version)
        else:
            refs = []
            for base in self.rng.sample(self.graphs, self.rng.randint(1, 3)):
                node = self.rng.choice(base.graph.nodes)["id"]
                # Some links point at a source not published yet or never: parked.
                refs.append((base.source_id if self.rng.random() < 0.9 else f"later/{node}.py", node))
            event = link(intent, version, refs)
        await self.ns.publish(self.ns.intent_topic, [event])
        self.sent["intent"] += 1

    @staticmethod
    def _graph(base: AstGraphUpserted, version: int) -> GraphData:
        """The base graph, its last node (and its edges) dropped on even versions, a property changed."""
        nodes: list[dict[str, Any]] = [dict(n) for n in base.graph.nodes]
        edges = list(base.graph.edges)
        if version % 2 == 0 and len(nodes) > 1:
            gone = nodes.pop()["id"]
            edges = [e for e in edges if gone not in (e["source"], e["target"])]
        nodes[0] = {**nodes[0], "properties": {**nodes[0]["properties"], "soak_version": version}}
        return GraphData.model_validate({"nodes": nodes, "edges": edges})


async def _drained(ns: Namespace, expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (committed := await ns.committed_total()) < expected:
        if time.monotonic() > deadline:
            msg = f"only {committed} of {expected} offsets committed after {timeout_s:.0f} s"
            raise RuntimeError(msg)
        await asyncio.sleep(1)


async def soak(stack: DevStack, minutes: float, logs: Path, restart_s: float = 360, kill_s: float = 540) -> bool:
    """Run the soak; print the figures; True when every check passed."""
    ns = await make_namespace(stack)
    graphs = [e for e in corpus(SOURCES) if len(e.graph.nodes) <= 3000]
    producer = Producer(ns, graphs)
    a, b, c = (Replica(name, ns, logs) for name in "ABC")
    for replica in (a, b, c):
        await replica.start()
    rss: list[tuple[float, float]] = []  # (elapsed s, replica A's RSS in MB)
    started = time.monotonic()
    next_restart, next_kill, next_sample, next_report = restart_s, kill_s, 0.0, 60.0
    exits: list[int] = []
    restarts = kills = 0
    while (elapsed := time.monotonic() - started) < minutes * 60:
        await producer.round()
        if elapsed >= next_sample:
            assert a.process is not None
            rss.append((elapsed, rss_mb(a.process.pid)))
            next_sample += 10
        if elapsed >= next_restart:
            exits.append(await b.stop())
            await b.start()
            restarts += 1
            next_restart += restart_s
        if elapsed >= next_kill:
            await c.stop(signal.SIGKILL)
            await asyncio.sleep(5)
            await c.start()
            kills += 1
            next_kill += kill_s
        if elapsed >= next_report:
            print(
                f"  {elapsed / 60:5.1f} min: sent {producer.sent}, committed {await ns.committed_total():,}, "
                f"replica A {rss[-1][1]:,.0f} MB, B restarted {restarts}x, C killed {kills}x",
                flush=True,
            )
            next_report += 60
        await asyncio.sleep(max(0.0, ROUND_S - (time.monotonic() - started - elapsed)))
    expected = producer.sent["graph"] + producer.sent["intent"] + producer.sent["hostile"] + producer.sent["tombstone"]
    await _drained(ns, expected, timeout_s=600)
    exits += [await replica.stop() for replica in (a, b, c)]
    soaked = await snapshot(ns)
    (kept,) = await ns.sql(
        "SELECT count(*) AS n, extract(epoch FROM now() - min(processed_at))::float AS oldest_s "
        "FROM gpm_processed_events"
    )

    # The same topics from the beginning, one worker, empty stores: the clean run.
    clean = await make_namespace(stack)
    clean.settings = clean.settings.model_copy(
        update={"kafka": clean.settings.kafka.model_copy(update={"topic_pattern": ns.settings.kafka.topic_pattern})}
    )
    clean.name = ns.name  # its committed offsets are read from the soak's topics
    reference = Replica("clean", clean, logs)
    await reference.start()
    await _drained(clean, expected, timeout_s=900)
    exits.append(await reference.stop())
    wanted = await snapshot(clean)
    return _report(soaked=soaked, wanted=wanted, rss=rss, exits=exits, producer=producer, minutes=minutes, kept=kept)


def _report(
    *,
    soaked: dict[str, list[str]],
    wanted: dict[str, list[str]],
    rss: list[tuple[float, float]],
    exits: list[int],
    producer: Producer,
    minutes: float,
    kept: dict[str, Any],
) -> bool:
    quarters = [[mb for at, mb in rss if q * minutes * 15 <= at < (q + 1) * minutes * 15] for q in range(4)]
    medians = [round(statistics.median(q)) if q else 0 for q in quarters]
    growth = medians[3] / medians[1] if medians[1] else float("inf")
    differ = sorted(part for part in wanted if part != "processed" and soaked.get(part) != wanted[part])
    checks = {
        "stores equal the clean run's": not differ,
        "replica A's RSS in the last quarter within 10% of the second": abs(growth - 1) <= 0.10,
        "every SIGTERM exit was 0": all(code == 0 for code in exits),
        # The last prune ran at most one interval before the drain ended, plus the drain itself.
        "no ledger row older than the retention (plus two prune intervals)": (kept["oldest_s"] or 0)
        <= RETENTION_S + 2 * PRUNE_INTERVAL_S,
    }
    print(f"ledger after the run: {kept['n']:,} rows, the oldest {kept['oldest_s'] or 0:,.0f} s old")
    print(json.dumps({"minutes": minutes, "sent": producer.sent, "rss_mb_median_by_quarter": medians}))
    print(f"replica A RSS by quarter (median MB): {medians}; last / second: {growth:.3f}")
    print(f"stores: {', '.join(f'{k}={len(v)}' for k, v in sorted(wanted.items()))}; differing: {differ or 'none'}")
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return all(checks.values())


def main() -> None:
    """``make soak`` (SOAK_MINUTES=60 by default)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--backend", choices=["falkordb", "neo4j"], default="falkordb")
    parser.add_argument("--restart-every", type=float, default=360, help="seconds between replica B's restarts")
    parser.add_argument("--kill-every", type=float, default=540, help="seconds between replica C's kills")
    parser.add_argument("--logs", type=Path, default=Path(".bench/soak"), help="the replicas' output")
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    with DevStack(graph_backend=args.backend) as stack:
        ok = asyncio.run(soak(stack, args.minutes, args.logs, args.restart_every, args.kill_every))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
