"""The PrometheusRule in deploy/monitoring, written from the plain rules file (``make monitoring``).

``alerts.yml`` is the one place the rules are edited: docker-compose's Prometheus loads it as
is, and the Prometheus Operator needs the same groups inside a PrometheusRule object.
``--check`` fails when the committed object differs from what this would write.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
HEADER = "# Written by `make monitoring` from alerts.yml: edit that file, not this one.\n"


class _Literal(str):
    """A multi-line string written as a YAML block, as in the source file."""

    __slots__ = ()


def _block(dumper: yaml.SafeDumper, text: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")


yaml.SafeDumper.add_representer(_Literal, _block)


def _blocks(value: object) -> object:
    if isinstance(value, dict):
        return {k: _blocks(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blocks(v) for v in value]
    return _Literal(value) if isinstance(value, str) and "\n" in value else value


def prometheus_rule() -> str:
    """The PrometheusRule object holding alerts.yml's groups, as YAML text."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "graph-postgres-manager", "labels": {"app.kubernetes.io/name": "graph-postgres-manager"}},
        "spec": {"groups": _blocks(groups)},
    }
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=200)


def main() -> None:
    """Write the PrometheusRule, or with ``--check`` say whether the committed one is current."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = parser.parse_args()
    text = prometheus_rule()
    if args.check:
        if PROMETHEUS_RULE.read_text() != text:
            sys.exit(f"{PROMETHEUS_RULE} is out of date with {RULES.name}: run `make monitoring`")
        return
    PROMETHEUS_RULE.write_text(text)


if __name__ == "__main__":
    main()
