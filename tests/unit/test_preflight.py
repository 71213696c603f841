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
