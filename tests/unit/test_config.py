"""Settings: errors name the variable and never echo secrets; DSNs are masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.compose import runner_limits, transaction_size
from worker.config import DEFAULT_TOPIC_PATTERN, load_settings, mask_dsn, unknown_variables
from worker.errors import ConfigError


def test_defaults_load(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With no variables set, the defaults are valid: the seed's 1000 rows a batch over Bolt."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.worker.transaction_size is None
    assert transaction_size(settings) == 1000


def test_transaction_size_follows_the_backend_unless_set(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """FalkorDB's default batch is 4000 rows (fewer, larger write queries); a set value wins on both."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPM_GRAPH__BACKEND", "falkordb")
    assert transaction_size(load_settings()) == 4000
    monkeypatch.setenv("GPM_WORKER__TRANSACTION_SIZE", "250")
    assert transaction_size(load_settings()) == 250
    monkeypatch.setenv("GPM_GRAPH__BACKEND", "neo4j")
    assert transaction_size(load_settings()) == 250
    assert runner_limits(load_settings()).transaction_size == 250


def test_bad_setting_is_named_without_its_value(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A bad value fails at start with the variable's name; a secret DSN is not echoed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPM_WORKER__TRANSACTION_SIZE", "0")
    monkeypatch.setenv("GPM_POSTGRES__DSN", "mysql://u:hunter2@db/x")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    text = str(caught.value)
    assert "GPM_WORKER__TRANSACTION_SIZE" in text
    assert "GPM_POSTGRES__DSN" in text
    assert "hunter2" not in text


def test_secret_is_hidden_in_repr(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Printing the settings never shows the password."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPM_GRAPH__PASSWORD", "s3cret-value")
    settings = load_settings()
    assert "s3cret-value" not in repr(settings)
    assert settings.graph.password.get_secret_value() == "s3cret-value"


def test_secrets_directory_supplies_nested_settings(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A file per variable in $GPM_SECRETS_DIR (a mounted Kubernetes Secret) fills that setting."""
    monkeypatch.chdir(tmp_path)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "GPM_POSTGRES__DSN").write_text("postgresql://app:s3cret@db:5432/gpm?sslmode=require\n")
    (secrets / "GPM_GRAPH__PASSWORD").write_text("graph-password")
    monkeypatch.setenv("GPM_SECRETS_DIR", str(secrets))
    settings = load_settings()
    assert settings.postgres.dsn.get_secret_value() == "postgresql://app:s3cret@db:5432/gpm?sslmode=require"
    assert settings.graph.password.get_secret_value() == "graph-password"
    assert unknown_variables({"GPM_SECRETS_DIR": str(secrets)}) == []
    # The environment wins over a file, as for .env.
    monkeypatch.setenv("GPM_GRAPH__PASSWORD", "from-env")
    assert load_settings().graph.password.get_secret_value() == "from-env"


def test_secrets_directory_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A missing secrets directory, or a bad value in one of its files, fails at start by name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPM_SECRETS_DIR", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="GPM_SECRETS_DIR"):
        load_settings()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "GPM_POSTGRES__DSN").write_text("mysql://u:hunter2@db/x")
    monkeypatch.setenv("GPM_SECRETS_DIR", str(secrets))
    with pytest.raises(ConfigError, match="GPM_POSTGRES__DSN") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


def test_mask_dsn() -> None:
    """Passwords in DSNs are replaced by ***."""
    assert mask_dsn("postgresql://app:pw@db:5432/gpm") == "postgresql://app:***@db:5432/gpm"
    assert mask_dsn("postgresql://app@db/gpm") == "postgresql://app@db/gpm"


@pytest.mark.parametrize(
    ("topic", "consumed"),
    [
        ("ast-graphs", True),
        ("ast-graphs.team-a", True),
        ("intent-links", True),
        ("ast-graphs.dlq", False),
        ("ast-graphs.team-a.dlq", False),
        ("other", False),
    ],
)
def test_topic_pattern(topic: str, consumed: bool) -> None:
    """The default pattern takes the graph and intent topics, never their dead-letter topics."""
    import re

    assert bool(re.match(DEFAULT_TOPIC_PATTERN, topic)) is consumed


def test_sasl_without_credentials_fails_naming_the_variables(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SASL needs a user and a password; the error names the variables, not the section."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid settings: GPM_KAFKA__SECURITY_PROTOCOL SASL_SSL needs GPM_KAFKA__SASL_USERNAME and "
        "GPM_KAFKA__SASL_PASSWORD"
    )


def test_tls_and_sasl_reach_every_kafka_client(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SASL_SSL gives a verifying TLS context and SCRAM credentials; the password stays out of repr."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("GPM_KAFKA__SASL_USERNAME", "gpm")
    monkeypatch.setenv("GPM_KAFKA__SASL_PASSWORD", "s3cret-value")
    settings = load_settings()
    options = settings.kafka.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_password"] == "s3cret-value"  # noqa: S105 - the test value set above
    assert options["ssl_context"].check_hostname
    assert "s3cret-value" not in repr(settings)


def test_plaintext_has_no_tls_context(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The default talks plaintext to a local broker."""
    monkeypatch.chdir(tmp_path)
    assert load_settings().kafka.client_options() == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_graph_defaults_follow_the_backend(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """GPM_GRAPH__BACKEND picks the URI, user and database defaults of that backend."""
    monkeypatch.chdir(tmp_path)
    neo4j = load_settings().graph
    assert (neo4j.backend, neo4j.uri, neo4j.user, neo4j.database) == (
        "neo4j",
        "bolt://127.0.0.1:7687",
        "neo4j",
        "neo4j",
    )
    monkeypatch.setenv("GPM_GRAPH__BACKEND", "falkordb")
    falkordb = load_settings().graph
    assert (falkordb.uri, falkordb.user, falkordb.database) == ("redis://127.0.0.1:6379", "default", "gpm")


def test_graph_uri_must_suit_the_backend(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A Bolt URL for FalkorDB (or an unknown backend) fails at start, naming the setting, never the password in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPM_GRAPH__BACKEND", "falkordb")
    monkeypatch.setenv("GPM_GRAPH__URI", "bolt://user:hunter2@graph:7687")
    with pytest.raises(ConfigError, match=r"GPM_GRAPH.*redis://") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    monkeypatch.setenv("GPM_GRAPH__BACKEND", "memgraph")
    with pytest.raises(ConfigError, match="GPM_GRAPH__BACKEND"):
        load_settings()


CANARY = "Canary-S3cr3t-9f2e"


def _error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    return str(caught.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GPM_KAFKA__BOOTSTRAP_SERVERS": "not a host:xx"}, "GPM_KAFKA__BOOTSTRAP_SERVERS"),
        ({"GPM_KAFKA__BOOTSTRAP_SERVERS": ""}, "GPM_KAFKA__BOOTSTRAP_SERVERS"),
        ({"GPM_KAFKA__TOPIC_PATTERN": ""}, "GPM_KAFKA__TOPIC_PATTERN"),
        ({"GPM_KAFKA__TOPIC_PATTERN": "^ast-graphs.*"}, "GPM_KAFKA__TOPIC_PATTERN"),
        ({"GPM_KAFKA__DLQ_SUFFIX": ""}, "GPM_KAFKA__DLQ_SUFFIX"),
        ({"GPM_KAFKA__GROUP_ID": ""}, "GPM_KAFKA__GROUP_ID"),
        ({"GPM_KAFKA__SESSION_TIMEOUT_MS": "999999999999"}, "GPM_KAFKA__SESSION_TIMEOUT_MS"),
        ({"GPM_KAFKA__HEARTBEAT_INTERVAL_MS": "20000"}, "GPM_KAFKA__HEARTBEAT_INTERVAL_MS"),
        ({"GPM_KAFKA": "not json"}, "GPM_KAFKA"),
        ({"GPM_POSTGRES__DSN": f"postgresql://u:{CANARY}@db:notaport/x"}, "GPM_POSTGRES__DSN"),
        ({"GPM_POSTGRES__DSN": f"postgresql://u:{CANARY}#x@db/x"}, "GPM_POSTGRES__DSN"),
        ({"GPM_POSTGRES__DSN": f"postgresql://u:{CANARY}/x@db/x"}, "GPM_POSTGRES__DSN"),
        ({"GPM_POSTGRES__MIN_POOL_SIZE": "5", "GPM_POSTGRES__MAX_POOL_SIZE": "2"}, "GPM_POSTGRES__MIN_POOL_SIZE"),
        ({"GPM_GRAPH__URI": "bolt://127.0.0.1:notaport"}, "GPM_GRAPH__URI"),
        ({"GPM_HEALTH__HOST": "not a host"}, "GPM_HEALTH__HOST"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting_never_its_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path, env: dict[str, str], named: str
) -> None:  # type: ignore[no-untyped-def]
    """Empty, crossed, looping and malformed values fail the start with the variable's name and no secret."""
    monkeypatch.chdir(tmp_path)
    text = _error(monkeypatch, **env)
    assert named in text
    assert CANARY not in text


def test_a_password_in_the_query_string_is_masked() -> None:
    """Libpq's ?password= and ?sslpassword= are credentials too."""
    dsn = f"postgresql://u@db:5432/x?sslmode=require&password={CANARY}&sslpassword={CANARY}"
    masked = mask_dsn(dsn)
    assert CANARY not in masked
    assert "sslmode=require" in masked
    assert "password=***" in masked


def test_credentials_in_a_graph_uri_are_kept_apart(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """bolt://user:pw@host moves user and password out of the URI, which then holds no secret."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPM_GRAPH__URI", f"bolt+s://reader:{CANARY}@graph.internal:7687")
    graph = load_settings().graph
    assert (graph.uri, graph.user, graph.password.get_secret_value()) == (
        "bolt+s://graph.internal:7687",
        "reader",
        CANARY,
    )


def test_unknown_variables_are_named() -> None:
    """A misspelt GPM_* variable is reported, not ignored in silence; test variables are not settings."""
    from worker.config import unknown_variables

    environ = {"GPM_WORKER__TRANSACTON_SIZE": "5", "GPM_KAFKA__GROUP_ID": "g", "GPM_TEST_KAFKA": "x", "PATH": "/"}
    assert unknown_variables(environ) == ["GPM_WORKER__TRANSACTON_SIZE"]


def test_the_consumer_never_subscribes_to_dead_letter_topics() -> None:
    """Whatever the pattern, the subscription excludes names ending in the DLQ suffix."""
    import re

    from worker.config import KafkaSettings

    kafka = KafkaSettings(topic_pattern=r"^team-.*", dlq_suffix=".dead")
    assert re.match(kafka.consumed_pattern(), "team-a")
    assert not re.match(kafka.consumed_pattern(), "team-a.dead")


def test_the_command_line_imports_no_store_or_model_to_show_its_help() -> None:
    """`gpm --help` stays fast (0.2-0.3 s measured, was 2 s): drivers, pydantic and the devstack load per command."""
    import subprocess
    import sys

    probe = (
        "import sys, worker.cli; heavy = ('pydantic', 'neo4j', 'aiokafka', 'asyncpg', 'worker.devstack', 'structlog');"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith('worker.devstack')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)  # noqa: S603
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # Credentials the protocol would ignore: an unauthenticated, unencrypted connection.
        (
            {"GPM_KAFKA__SASL_USERNAME": "gpm", "GPM_KAFKA__SASL_PASSWORD": CANARY},
            "GPM_KAFKA__SASL_USERNAME/PASSWORD are set but GPM_KAFKA__SECURITY_PROTOCOL is PLAINTEXT",
        ),
        ({"GPM_KAFKA__SSL_CAFILE": "{ca}"}, "GPM_KAFKA__SSL_CAFILE set but GPM_KAFKA__SECURITY_PROTOCOL is PLAINTEXT"),
        (
            {"GPM_KAFKA__SECURITY_PROTOCOL": "SSL", "GPM_KAFKA__SSL_CAFILE": "{missing}"},
            "GPM_KAFKA__SSL_CAFILE: {missing} does not exist or is not a file",
        ),
        (
            {"GPM_KAFKA__SECURITY_PROTOCOL": "SSL", "GPM_KAFKA__SSL_CERTFILE": "{ca}"},
            "GPM_KAFKA__SSL_CERTFILE and GPM_KAFKA__SSL_KEYFILE go together",
        ),
        (
            {
                "GPM_KAFKA__BOOTSTRAP_SERVERS": "kafka-0.prod:9092",
                "GPM_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "GPM_KAFKA__SASL_USERNAME": "gpm",
                "GPM_KAFKA__SASL_PASSWORD": CANARY,
            },
            "SASL_PLAINTEXT sends the credentials to kafka-0.prod:9092 unencrypted",
        ),
        (
            {"GPM_POSTGRES__DSN": f"postgresql://gpm:{CANARY}@pg.prod:5432/gpm"},
            "GPM_POSTGRES__DSN sends a password to pg.prod without requiring TLS (sslmode=prefer",
        ),
        (
            {"GPM_POSTGRES__DSN": f"postgresql://gpm:{CANARY}@pg.prod/gpm?sslmode=verify-full&sslrootcert={{missing}}"},
            "GPM_POSTGRES__DSN: its sslrootcert {missing} does not exist or is not a file",
        ),
        (
            {"GPM_GRAPH__URI": "neo4j://graph.prod:7687", "GPM_GRAPH__PASSWORD": CANARY},
            "GPM_GRAPH__PASSWORD would be sent to graph.prod unencrypted (neo4j://): use neo4j+s://",
        ),
        (
            {
                "GPM_GRAPH__BACKEND": "falkordb",
                "GPM_GRAPH__URI": "redis://graph.prod:6379",
                "GPM_GRAPH__PASSWORD": CANARY,
            },
            "GPM_GRAPH__PASSWORD would be sent to graph.prod unencrypted (redis://): use rediss://",
        ),
        ({"GPM_GRAPH__URI": "bolt://graph.prod:7687", "GPM_GRAPH__CA_FILE": "{ca}"}, "uses no TLS: use bolt+s://"),
        ({"GPM_GRAPH__URI": "bolt+ssc://graph.prod:7687", "GPM_GRAPH__CA_FILE": "{ca}"}, "trusts any certificate"),
        (
            {"GPM_GRAPH__URI": "bolt+s://graph.prod:7687", "GPM_GRAPH__CA_FILE": "{missing}"},
            "GPM_GRAPH__CA_FILE: {missing} does not exist or is not a file",
        ),
    ],
)
def test_insecure_or_incomplete_tls_settings_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    """Credentials that would travel unencrypted or be ignored, certificate files not there: refused at start."""
    monkeypatch.chdir(tmp_path)
    ca = tmp_path / "ca.crt"
    ca.write_text("not checked here: only that it exists and is readable")
    paths = {"ca": str(ca), "missing": str(tmp_path / "nowhere" / "ca.crt")}
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(**paths))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert expected.format(**paths) in str(caught.value)
    assert CANARY not in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        # This machine, a Unix socket: nothing crosses a network.
        {"GPM_POSTGRES__DSN": f"postgresql://gpm:{CANARY}@127.0.0.1:5432/gpm"},
        {"GPM_POSTGRES__DSN": f"postgresql://gpm:{CANARY}@/gpm?host=/run/postgresql"},
        {"GPM_GRAPH__URI": "bolt://localhost:7687", "GPM_GRAPH__PASSWORD": CANARY},
        # TLS asked for.
        {"GPM_POSTGRES__DSN": f"postgresql://gpm:{CANARY}@pg.prod/gpm?sslmode=verify-full&sslrootcert=system"},
        {"GPM_GRAPH__URI": "neo4j+s://graph.prod:7687", "GPM_GRAPH__PASSWORD": CANARY, "GPM_GRAPH__CA_FILE": "{ca}"},
        # Said to be meant.
        {
            "GPM_POSTGRES__DSN": f"postgresql://gpm:{CANARY}@pg.prod/gpm",
            "GPM_POSTGRES__ALLOW_PLAINTEXT_CREDENTIALS": "true",
        },
        {
            "GPM_GRAPH__URI": "bolt://graph.prod:7687",
            "GPM_GRAPH__PASSWORD": CANARY,
            "GPM_GRAPH__ALLOW_PLAINTEXT_CREDENTIALS": "true",
        },
        {
            "GPM_KAFKA__BOOTSTRAP_SERVERS": "kafka-0.prod:9092",
            "GPM_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "GPM_KAFKA__SASL_USERNAME": "gpm",
            "GPM_KAFKA__SASL_PASSWORD": CANARY,
            "GPM_KAFKA__ALLOW_PLAINTEXT_CREDENTIALS": "true",
        },
    ],
)
def test_secure_local_or_opted_in_settings_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]
) -> None:
    """The refusals above leave alone what is encrypted, local, or explicitly allowed."""
    monkeypatch.chdir(tmp_path)
    ca = tmp_path / "ca.crt"
    ca.write_text("-")
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(ca=ca))
    load_settings()
