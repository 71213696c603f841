"""Batch planning: newest version per aggregate wins; duplicates and old versions do nothing."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from tests.factories import delete, graph, inbound, link, upsert
from worker.ports import AppliedState, Outcome
from worker.saga.plan import plan_batch

G = graph([("a", "Module")])


def test_newest_version_in_a_batch_wins() -> None:
    """Two versions of one source in a batch: only the newer one is applied."""
    items = [inbound(upsert("f.py", 1, G), 0), inbound(upsert("f.py", 2, G), 1)]
    plan = plan_batch(items, AppliedState())
    assert [o for _, o in plan.outcomes] == [Outcome.SUPERSEDED, Outcome.APPLIED]
    assert [e.source_version for e in plan.changes.upserts] == [2]


def test_a_version_is_immutable_the_first_event_wins() -> None:
    """Two events with one version: the first wins, in one batch as across batches."""
    first, second = upsert("f.py", 3, G), upsert("f.py", 3, graph([("b", "Name")]))
    plan = plan_batch([inbound(first, 0), inbound(second, 1)], AppliedState())
    assert [o for _, o in plan.outcomes] == [Outcome.APPLIED, Outcome.SUPERSEDED]
    later = plan_batch([inbound(second, 1)], AppliedState(source_versions={"f.py": 3}))
    assert later.changes.empty


def test_versions_at_or_below_the_applied_one_are_superseded() -> None:
    """A replayed or late event never overwrites a newer applied version."""
    items = [inbound(upsert("f.py", 2, G)), inbound(delete("g.py", 5))]
    plan = plan_batch(items, AppliedState(source_versions={"f.py": 2, "g.py": 7}))
    assert plan.changes.empty
    assert all(o is Outcome.SUPERSEDED for _, o in plan.outcomes)


def test_processed_event_ids_are_duplicates() -> None:
    """An event id already in the ledger is a duplicate, even with a newer version."""
    event = upsert("f.py", 9, G)
    plan = plan_batch([inbound(event)], AppliedState(processed_event_ids=frozenset({event.event_id})))
    assert plan.outcomes[0][1] is Outcome.DUPLICATE


def test_sources_and_intents_are_separate_aggregates() -> None:
    """An intent and a source with the same id string do not supersede each other."""
    intent = uuid.uuid4()
    items = [inbound(upsert(str(intent), 1, G)), inbound(link(intent, 1, [("f.py", "a")]))]
    plan = plan_batch(items, AppliedState())
    assert len(plan.changes.upserts) == 1
    assert len(plan.changes.intent_upserts) == 1


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 5)), max_size=30), st.integers(-1, 5))
def test_applied_versions_are_the_maximum_above_the_applied_state(events: list[tuple[str, int]], applied: int) -> None:
    """For any batch, each source's applied event has its highest new version."""
    items = [inbound(upsert(source, version, G), offset) for offset, (source, version) in enumerate(events)]
    plan = plan_batch(items, AppliedState(source_versions={"a": applied}))
    expected = {}
    for source, version in events:
        floor = applied if source == "a" else -1
        if version > floor:
            expected[source] = max(expected.get(source, -1), version)
    assert {e.source_id: e.source_version for e in plan.changes.upserts} == expected
    assert sum(o is Outcome.APPLIED for _, o in plan.outcomes) == len(expected)


def test_a_tombstone_deletes_what_precedes_it_and_yields_to_what_follows() -> None:
    """A tombstone takes the newest version before it (applied or in the batch); a later, higher version wins."""
    from worker.events import Tombstone, tombstone

    def dead(offset: int) -> Tombstone:
        return tombstone(b"a.py", "ast-graphs", 0, offset, 1_764_583_200_000)

    g = graph([("m", "Module")])
    state = AppliedState(source_versions={"a.py": 5})
    # Alone: it deletes the applied version 5, at version 5.
    plan = plan_batch([inbound(dead(9), offset=9)], state)
    ((item, outcome),) = plan.outcomes
    assert (outcome, item.event.source_version, len(plan.changes.deletes)) == (Outcome.APPLIED, 5, 1)
    # After v7 in the same batch: it deletes v7, at version 7; an older v6 after it stays superseded.
    plan = plan_batch(
        [inbound(upsert("a.py", 7, g), offset=1), inbound(dead(2), offset=2), inbound(upsert("a.py", 6, g), offset=3)],
        state,
    )
    assert [o for _, o in plan.outcomes] == [Outcome.SUPERSEDED, Outcome.APPLIED, Outcome.SUPERSEDED]
    assert plan.changes.upserts == ()
    assert plan.changes.deletes[0].source_version == 7
    # Followed by v8: the new version wins.
    plan = plan_batch([inbound(dead(1), offset=1), inbound(upsert("a.py", 8, g), offset=2)], state)
    assert [o for _, o in plan.outcomes] == [Outcome.SUPERSEDED, Outcome.APPLIED]
    # Replayed: its event id comes from its position, so it is a duplicate.
    again = plan_batch([inbound(dead(9), offset=9)], AppliedState(processed_event_ids=frozenset({dead(9).event_id})))
    assert [o for _, o in again.outcomes] == [Outcome.DUPLICATE]
    # For a source never registered: nothing to delete, nothing registered (no row at version -1).
    unknown = plan_batch([inbound(dead(3), offset=3)], AppliedState())
    assert [o for _, o in unknown.outcomes] == [Outcome.SUPERSEDED]
    assert unknown.changes.deletes == ()


def test_a_new_version_of_an_unchanged_graph_is_not_written_again() -> None:
    """Same nodes and edges (in any order) as the graph in the store: only the registry moves; a change rewrites."""
    from worker.events import graph_digest

    g = graph([("m", "Module"), ("f", "FunctionDef")], [("m", "BODY", "f")])
    reordered = graph([("f", "FunctionDef"), ("m", "Module")], [("m", "BODY", "f")])
    assert graph_digest(g) == graph_digest(reordered)
    state = AppliedState(source_versions={"a.py": 1}, source_digests={"a.py": graph_digest(g)})
    plan = plan_batch([inbound(upsert("a.py", 2, reordered))], state)
    assert [o for _, o in plan.outcomes] == [Outcome.APPLIED]
    assert (plan.changes.upserts, plan.unchanged) == ((), frozenset({"a.py"}))
    changed = graph([("m", "Module"), ("c", "ClassDef")], [("m", "BODY", "c")])
    plan = plan_batch([inbound(upsert("a.py", 3, changed))], state)
    assert (len(plan.changes.upserts), plan.unchanged) == (1, frozenset())
    assert plan.digests == {"a.py": graph_digest(changed)}
