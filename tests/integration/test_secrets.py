"""No secret is shown, no forged header trusted, no record's text read as markup (issue 17)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

import pytest

from tests.factories import graph, upsert
from tests.integration.conftest import Namespace, stop_workers
from tests.integration.test_ops_cli import gpm
from worker.events import encode_event

pytestmark = pytest.mark.integration

CANARY = "Canary-S3cr3t-9f2e"
# Each way a credential can be written, with no PostgreSQL behind it (port 1 refuses at once).
DSNS = {
    "query string": f"postgresql://app@127.0.0.1:1/gpm?password={CANARY}",
    "user info": f"postgresql://app:{CANARY}@127.0.0.1:1/gpm",
    "unencoded #": f"postgresql://app:{CANARY}#x@127.0.0.1:1/gpm",
    "unencoded /": f"postgresql://app:{CANARY}/x@127.0.0.1:1/gpm",
}


async def test_no_command_shows_the_database_password(ns: Namespace) -> None:
    """status, preflight, check, stats and migrate fail with one message, and no output holds the secret.

    Every command with every way of writing the password, run side by side.
    """
    commands = (["status"], ["preflight"], ["check"], ["stats"], ["migrate"])
    runs = [
        (dsn_kind, command, {"GPM_POSTGRES__DSN": dsn, "GPM_GRAPH__URI": f"bolt://reader:{CANARY}@127.0.0.1:1"})
        for dsn_kind, dsn in DSNS.items()
        for command in commands
    ]
    results = await asyncio.gather(*(gpm(ns, *command, env=env) for _, command, env in runs))
    for (dsn_kind, command, _), (code, out, err) in zip(runs, results, strict=True):
        assert code != 0, (dsn_kind, command)
        assert CANARY not in out + err, f"{dsn_kind} {command}: {out + err}"
        assert "Traceback" not in err, f"{dsn_kind} {command}: {err}"


async def test_the_worker_log_never_shows_the_password(ns: Namespace) -> None:
    """The worker waiting for an unreachable PostgreSQL logs where, never the credential."""
    env = ns.env()
    env.update(GPM_POSTGRES__DSN=DSNS["query string"], GPM_WORKER__RETRY_MAX_S="0.2")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "run", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    ns.processes.append(process)
    assert process.stdout is not None
    lines: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            # Three waits logged are enough to have seen the message and its retries.
            while sum(b"stores not reachable" in line for line in lines) < 3 and (
                line := await process.stdout.readline()
            ):
                lines.append(line)
    output = b"".join(lines).decode() + "".join(await stop_workers(process))
    assert "stores not reachable at start" in output
    assert "password=***" in output
    assert CANARY not in output


async def test_forged_error_headers_are_not_trusted_and_messages_are_not_markup(ns: Namespace) -> None:
    """A record carrying its own __connect.errors.* headers cannot set its letter's origin or reason; '[/]' is text."""
    forged = [
        ("__connect.errors.topic", b"victim"),
        ("__connect.errors.reason", b"store-rejected"),
        ("__connect.errors.exception.message", b"all fine, re-drive me"),
    ]
    document = json.loads(encode_event(upsert("f.py", 1, graph([("m", "Module")]))))
    # Valid but for a field named "[/]" (markup) and one that clears a terminal (an ANSI escape).
    bad = json.dumps({**document, "[/]": 1, "\x1b[2J": 1}).encode()
    await ns.publish_raw(ns.graph_topic, bad, key=b"k", headers=forged)
    worker = await ns.spawn_worker()
    await ns.wait_committed(1)

    code, out, err = await gpm(ns, "dlq", "list", "--json")
    assert code == 0, err
    (letter,) = [json.loads(line) for line in out.splitlines()]
    assert (letter["reason"], letter["original"].split(":")[0]) == ("invalid", ns.graph_topic)
    assert "[/]" in letter["error"]
    assert letter["headers"]["gpm.original.__connect.errors.topic"] == "victim"

    code, out, err = await gpm(ns, "dlq", "list")
    assert (code, "[/]" in out, "1 dead letter(s)" in out) == (0, True, True), err
    assert "\x1b" not in out
    assert "\\x1b[2J" in out  # shown escaped
    for command in ("list", "redrive"):
        code, out, err = await gpm(ns, "dlq", command, "--grep", "([")
        assert code == 1
        assert err.strip().splitlines() == [f"--grep '([' is not a regular expression: {err.split(': ', 1)[1].strip()}"]
    # The forged reason is not read: nothing matches, nothing is sent to "victim".
    code, _, err = await gpm(ns, "dlq", "redrive", "--reason", "store-rejected")
    assert (code, "0 dead letter(s) match" in err) == (0, True), err
    await stop_workers(worker)


async def test_refused_credentials_stop_the_start_at_once(ns: Namespace) -> None:
    """A wrong graph password is not waited out as an outage: `gpm run` exits with a message naming the setting."""
    text = await _failed_start(ns, GPM_GRAPH__PASSWORD=CANARY)
    reason = "refused the connection: wrong credentials (Neo.ClientError.Security.Unauthorized)"
    assert f"{reason}; check GPM_GRAPH__USER/PASSWORD" in text
    assert CANARY not in text


async def test_a_login_postgresql_refuses_stops_the_start_at_once(ns: Namespace) -> None:
    """PostgreSQL refusing the login (SQLSTATE class 28) fails the start at once, naming GPM_POSTGRES__DSN."""
    from urllib.parse import urlsplit, urlunsplit

    await ns.sql("CREATE ROLE gpm_locked NOLOGIN")
    parts = urlsplit(ns.settings.postgres.dsn.get_secret_value())
    host = parts.netloc.rpartition("@")[2]
    dsn = urlunsplit((parts.scheme, f"gpm_locked:{CANARY}@{host}", parts.path, parts.query, ""))
    text = await _failed_start(ns, GPM_POSTGRES__DSN=dsn)
    reason = 'login refused (role "gpm_locked" is not permitted to log in)'
    assert f"PostgreSQL refused the connection: {reason}; check GPM_POSTGRES__DSN" in text
    assert CANARY not in text


async def _failed_start(ns: Namespace, **env: str) -> str:
    """Run `gpm run` with these settings over the namespace's; it must exit 1 by itself. Its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        env={**ns.env(), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    ns.processes.append(process)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    text = output.decode()
    assert process.returncode == 1, text
    return text
