"""The sample producer: real Python files as AST graph events."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import orjson
import pytest

from worker.devjob import corpus
from worker.sample import graph_from_source


def test_constants_json_and_int64_cannot_hold_become_text() -> None:
    """An integer past 64 bits, an infinite float or a lone surrogate is kept as text, so the event encodes."""
    graph = graph_from_source('a = 18446744073709551616\nb = 1e999\nc = 7\nd = True\ne = "x\\udc80"\n')
    values = [n["properties"]["value"] for n in graph.nodes if n["type"] == "Constant"]
    assert values == ["18446744073709551616", "inf", 7, True, "x\\udc80"]
    assert orjson.loads(orjson.dumps(graph.model_dump(mode="json")))["nodes"][-1]["properties"]["value"] == "x\\udc80"


def test_a_corpus_past_the_standard_library_goes_on_into_the_installed_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Standard library first, then site-packages under ids that cannot clash; unparseable or unkept files skipped."""
    stdlib, packages = tmp_path / "lib", tmp_path / "venv" / "site-packages"
    for tree, names in ((stdlib, ("a.py", "tests/t.py", "y.py", "z.py")), (packages, ("a.py", "pkg/b.py"))):
        for name in names:
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_text("print 'python 2'\n" if name == "y.py" else "x = 1\n")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(stdlib), "purelib": str(packages)})
    assert [e.source_id for e in corpus(3)] == ["a.py", "z.py", "site-packages/a.py"]
    assert [e.source_id for e in corpus(10)][2:] == ["site-packages/a.py", "site-packages/pkg/b.py"]
    assert [e.source_id for e in corpus(10, root=packages)] == ["a.py", "pkg/b.py"]
    assert [e.source_id for e in corpus(2, keep=lambda e: e.source_id != "a.py")] == ["z.py", "site-packages/a.py"]
