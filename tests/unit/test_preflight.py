"""Preflight's pure parts: which graph servers pass, and how failures are reported."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError, PreflightError
from worker.preflight import Check, PreflightReport, graph_version_ok


@pytest.mark.parametrize(
    ("agent", "ok"),
    [
        ("Neo4j/5.26.0", True),
        ("Neo4j/5.1.0", True),
        ("Neo4j/2025.10.1", True),  # calendar versions follow 5.26
        ("Neo4j/5.26.0 compatible (ArcadeDB 26.10.2)", True),
        ("Neo4j/4.4.30", False),
        ("Memgraph/2.19", False),
        ("FalkorDB/4.16.3", True),
        ("FalkorDB/3.2.0", False),
        ("", False),
    ],
)
def test_graph_server_versions(agent: str, ok: bool) -> None:
    """Neo4j 5.x (and its calendar-versioned successors) and FalkorDB 4+ pass; older and unknown servers do not."""
    assert graph_version_ok(agent) is ok


def test_report_lists_every_failure_in_one_error() -> None:
    """An operator sees all that is missing at once, not one item per restart."""
    report = PreflightReport(
        [
            Check("PostgreSQL version", ok=False, detail="14.2 (15 or newer needed)"),
            Check("PostgreSQL table rights", ok=True, detail="granted"),
            Check("graph write rights", ok=False, detail="Forbidden"),
        ]
    )
    assert not report.ok
    with pytest.raises(PreflightError) as caught:
        report.raise_for_failures()
    assert str(caught.value) == (
        "preflight failed: PostgreSQL version: 14.2 (15 or newer needed); graph write rights: Forbidden"
    )
    assert isinstance(caught.value, ConfigError)  # stops the start like a bad setting
    PreflightReport([Check("x", ok=True, detail="")]).raise_for_failures()


def test_topics_check_wants_a_consumed_topic_and_its_dead_letter_topic() -> None:
    """No consumed topic, or one without its DLQ (an outage once auto-create is off): FAIL, naming what to run."""
    from worker.config import KafkaSettings
    from worker.preflight import _topics_check

    kafka = KafkaSettings()
    none = _topics_check(kafka, {"other", "ast-graphs.dlq"})
    assert not none.ok
    assert "no topic visible to this user matches GPM_KAFKA__TOPIC_PATTERN" in none.detail
    no_dlq = _topics_check(kafka, {"ast-graphs", "intent-links", "intent-links.dlq"})
    assert (no_dlq.ok, no_dlq.detail) == (
        False,
        "dead-letter topics missing: ast-graphs.dlq (gpm topics ensure --topic T creates them)",
    )
    fine = _topics_check(kafka, {"ast-graphs", "ast-graphs.dlq"})
    assert (fine.ok, fine.detail) == (True, "ast-graphs, each with its dead-letter topic")


@pytest.mark.parametrize(
    ("rights", "ok", "detail"),
    [
        (None, True, "not reported: the broker did not answer Metadata v8"),
        ({"ast-graphs": -(2**31), "ast-graphs.dlq": -(2**31)}, True, "not reported by the broker (no authorizer)"),
        ({"ast-graphs": 1 << 3, "ast-graphs.dlq": 1 << 4}, True, "READ on the consumed topics, WRITE on their"),
        (
            {"ast-graphs": 1 << 8, "ast-graphs.dlq": 1 << 3},
            False,
            "missing: READ on ast-graphs, WRITE on ast-graphs.dlq",
        ),
    ],
)
async def test_topic_rights_check_reads_the_brokers_bits(
    monkeypatch: pytest.MonkeyPatch, rights: dict[str, int] | None, ok: bool, detail: str
) -> None:
    """READ (bit 3) on what is consumed, WRITE (bit 4) on dead-letter topics; none assumed if the broker is silent."""
    from worker import preflight
    from worker.config import KafkaSettings

    async def answer(*_: object) -> dict[str, int] | None:
        return rights

    monkeypatch.setattr(preflight, "topic_rights", answer)
    check = await preflight._topic_rights_check(KafkaSettings(), {"ast-graphs", "ast-graphs.dlq"})
    assert check.ok is ok
    assert check.detail.startswith(detail)
