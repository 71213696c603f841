"""Turn a batch of events into the changes to apply, given what was already applied.

Pure logic, no I/O: the coordinator loads the applied state, calls :func:`plan_batch`
and hands the result to the stores. Within a batch only the newest event of each
aggregate (a source file or an intent) takes effect; older ones, and any version at or
below what is already applied, are recorded as superseded, so replays and
out-of-order deliveries change nothing. A new version whose graph has the digest of the
one in the store is not written to the graph again: only its registry row moves.
"""

from __future__ import annotations

import dataclasses
from uuid import UUID

from worker.events import (
    AstGraphDeleted,
    AstGraphUpserted,
    Event,
    IntentLinkDeleted,
    IntentLinkUpserted,
    Tombstone,
    graph_digest,
)
from worker.ports import AppliedState, BatchPlan, GraphChanges, InboundEvent, Outcome


def _aggregate(event: Event) -> tuple[str, str]:
    kind = "intent" if isinstance(event, IntentLinkUpserted | IntentLinkDeleted) else "source"
    return kind, event.source_id


def _applied_version(event: Event, state: AppliedState) -> int:
    if isinstance(event, IntentLinkUpserted | IntentLinkDeleted):
        return state.intent_versions.get(event.intent_id, -1)
    return state.source_versions.get(event.source_id, -1)


def plan_batch(events: list[InboundEvent], state: AppliedState) -> BatchPlan:
    """Pick the newest new event per aggregate; everything else is superseded or duplicate.

    A tombstone (a record without a value) deletes what precedes it: it takes the version
    applied or the newest earlier in the batch, whichever is higher, and wins at that version;
    for a source with neither it is superseded (it registers nothing).
    """
    winners: dict[tuple[str, str], tuple[int, InboundEvent]] = {}  # aggregate -> (index, item)
    seen_ids: set[UUID] = set()
    outcomes: list[Outcome] = []
    for index, item in enumerate(events):
        event = item.event
        if event.event_id in state.processed_event_ids or event.event_id in seen_ids:
            outcomes.append(Outcome.DUPLICATE)
            continue
        seen_ids.add(event.event_id)
        outcomes.append(Outcome.SUPERSEDED)
        aggregate = _aggregate(event)
        current = winners.get(aggregate)
        applied = _applied_version(event, state)
        if isinstance(event, Tombstone):
            version = max(applied, current[1].event.source_version if current else -1)
            if version < 0:
                continue  # nothing of that source to delete: the tombstone changes nothing
            winners[aggregate] = (
                index,
                dataclasses.replace(item, event=event.model_copy(update={"source_version": version})),
            )
            continue
        if event.source_version <= applied:
            continue
        # A version is immutable: of two events with the same version the first one wins,
        # inside a batch exactly as across batches, so batch boundaries never change results.
        if current is None or event.source_version > current[1].event.source_version:
            winners[aggregate] = (index, item)
    chosen = dict(winners.values())
    for index in chosen:
        outcomes[index] = Outcome.APPLIED
    picked = [item.event for item in chosen.values()]
    digests = {e.source_id: graph_digest(e.graph) for e in picked if isinstance(e, AstGraphUpserted)}
    unchanged = frozenset(source for source, digest in digests.items() if state.source_digests.get(source) == digest)
    changes = GraphChanges(
        upserts=tuple(e for e in picked if isinstance(e, AstGraphUpserted) and e.source_id not in unchanged),
        deletes=tuple(e for e in picked if isinstance(e, AstGraphDeleted)),
        intent_upserts=tuple(e for e in picked if isinstance(e, IntentLinkUpserted)),
        intent_deletes=tuple(e for e in picked if isinstance(e, IntentLinkDeleted)),
    )
    return BatchPlan(
        changes=changes,
        # A tombstone that wins is recorded with the version it deleted.
        outcomes=tuple(
            (chosen.get(i, item), outcome) for i, (item, outcome) in enumerate(zip(events, outcomes, strict=True))
        ),
        digests=digests,
        unchanged=unchanged,
    )
