"""Settings, loaded once from the environment, ``.env`` and a secrets directory.

Every variable is prefixed ``GPM_`` and nested sections use ``__``, e.g.
``GPM_WORKER__TRANSACTION_SIZE=1000`` or ``GPM_POSTGRES__DSN=postgresql://...``.
Secrets are ``SecretStr`` and the helpers here render DSNs with the password masked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from worker.errors import ConfigError
from worker.failpoints import CrashPoint

ENV_PREFIX = "GPM_"
# Where Kubernetes mounts a Secret as files: one file a variable, named like it
# (GPM_POSTGRES__DSN), read before the environment is consulted.
SECRETS_DIR_VARIABLE = "GPM_SECRETS_DIR"
# Test suites' own variables (GPM_TEST_*) are not settings.
TEST_PREFIX = "GPM_TEST_"
# A host name or an IP address (IPv6 written without its brackets here).
_HOST = re.compile(r"[A-Za-z0-9._:-]{1,253}")
# Topic names a topic pattern is tried against for dead-letter loops.
_TOPIC_EXAMPLES = ("ast-graphs", "ast-graphs.a", "ast-graphs.team-a", "intent-links", "a")
# Topics this worker consumes: ast-graphs, ast-graphs.<name>, intent-links; never their
# dead-letter topics (".dlq"), which would otherwise match the ast-graphs.<name> form.
# The graph backends an adapter exists for (worker/stores/neo4j.py, falkordb.py).
GraphBackendName = Literal["neo4j", "falkordb"]
# The topics producers publish to unless told otherwise; with their dead-letter topics,
# what `gpm topics ensure` creates and `gpm preflight` describes.
DEFAULT_TOPICS = ("ast-graphs", "intent-links")
DEFAULT_TOPIC_PATTERN = r"^(?!.*\.dlq$)(ast-graphs(\.[A-Za-z0-9_-]+)*|intent-links)$"


# Query-string parameters that carry a credential in a libpq or driver URL.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword", "passfile", "token", "secret", "apikey", "api_key"})


def mask_dsn(dsn: str) -> str:
    """Return the URL with every credential (user-info password, secret query parameters) replaced by ``***``."""
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if port is not None:
            host = f"{host}:{port}"
        netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{key}=***" if key.lower() in _SECRET_PARAMETERS else urlencode({key: value}) for key, value in pairs
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _url_problem(url: str, schemes: set[str]) -> str | None:
    """What is wrong with a service URL, in words that never quote it (it may hold a secret)."""
    if not url.strip():
        return "must not be empty"
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        return "must start with " + " or ".join(f"{s}://" for s in sorted(schemes))
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return (
            "is not a valid URL: its port is not a number from 0 to 65535 (a password holding '/', '#', '@' "
            "or ':' must be percent-encoded)"
        )
    if parts.fragment or "#" in url:
        return "is not a valid URL: it holds a '#' (percent-encode it as %23 in a password)"
    if parts.scheme != "unix" and not parts.hostname and not parse_qs(parts.query).get("host"):
        return "is not a valid URL: it names no host"
    return None


def file_problem(path: Path) -> str | None:
    """Why a certificate or key file cannot be used (the path is not a secret, so it is named)."""
    if not path.is_file():
        return f"{path} does not exist or is not a file"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable by this process"
    return None


def is_local_host(host: str | None) -> bool:
    """A host on this machine (or a Unix socket): credentials sent there never cross a network."""
    if not host or host.startswith("/"):
        return True
    host = host.strip("[]").lower()
    return host in {"localhost", "::1"} or host.startswith("127.")


_PLAINTEXT_OPT_IN = "ALLOW_PLAINTEXT_CREDENTIALS"


def _check_files(section: str, files: Mapping[str, Path | None]) -> None:
    for field, path in files.items():
        if path is not None and (problem := file_problem(path)):
            msg = f"{ENV_PREFIX}{section}__{field.upper()}: {problem}"
            raise ValueError(msg)


class KafkaSettings(BaseModel):
    """Broker connection and consumer-group behaviour."""

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = Field("graph-postgres-manager", min_length=1, max_length=249)
    client_id: str = Field("graph-postgres-manager", min_length=1, max_length=249)
    topic_pattern: str = Field(DEFAULT_TOPIC_PATTERN, min_length=1)
    # Legal topic characters, starting with a separator: "" would dead-letter into the
    # consumed topic itself, for ever.
    dlq_suffix: str = Field(".dlq", pattern=r"^[._-][A-Za-z0-9._-]{1,40}$")
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # The broker's group.max.session.timeout.ms is 30 minutes by default.
    session_timeout_ms: int = Field(10_000, ge=1_000, le=1_800_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100, le=600_000)
    max_poll_records: int = Field(500, ge=1)
    # Upper bound on bytes fetched per partition; with max_poll_records it bounds memory.
    max_partition_fetch_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    metadata_max_age_ms: int = Field(30_000, ge=1_000)
    # Static membership: a stable id per replica (e.g. the StatefulSet pod name) lets a
    # restart within session_timeout_ms keep its partitions without a rebalance.
    group_instance_id: str | None = None
    # Transport security, as Kafka clients name it. SSL/SASL_SSL verify the broker against
    # ssl_cafile (or the system store); certfile/keyfile give a client certificate (mTLS).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # SASL_PLAINTEXT to a broker on another host sends credentials unencrypted: refused
    # unless this says it is meant (a private network you trust, a sidecar doing TLS).
    allow_plaintext_credentials: bool = False

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        servers = [server.strip() for server in value.split(",")]
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not _HOST.fullmatch(host.strip("[]")) or not port.isdigit() or not 0 < int(port) < 65536:  # noqa: PLR2004
                msg = "must be host:port pairs separated by commas, e.g. kafka-0:9092,kafka-1:9092"
                raise ValueError(msg)
        return ",".join(servers)

    @model_validator(mode="after")
    def _no_loops(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            msg = "GPM_KAFKA__HEARTBEAT_INTERVAL_MS must be at most a third of GPM_KAFKA__SESSION_TIMEOUT_MS"
            raise ValueError(msg)
        pattern = re.compile(self.topic_pattern)
        looping = [t + self.dlq_suffix for t in _TOPIC_EXAMPLES if pattern.match(t + self.dlq_suffix)]
        if looping:
            msg = (
                f"GPM_KAFKA__TOPIC_PATTERN matches dead-letter topics (e.g. {looping[0]}): the worker would "
                "consume its own dead letters and dead-letter them again; exclude them as the default pattern does"
            )
            raise ValueError(msg)
        return self

    def consumed_pattern(self) -> str:
        """``topic_pattern`` as the consumer subscribes to it: never a topic ending with the DLQ suffix.

        The settings check refuses a pattern that matches the usual dead-letter names; this
        guard holds for every other name too, so no pattern can make dead letters loop.
        """
        return rf"^(?!.*{re.escape(self.dlq_suffix)}$)(?:{self.topic_pattern})"

    @model_validator(mode="after")
    def _sasl_has_credentials(self) -> KafkaSettings:
        protocol = self.security_protocol
        if protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            msg = f"GPM_KAFKA__SECURITY_PROTOCOL {protocol} needs GPM_KAFKA__SASL_USERNAME and GPM_KAFKA__SASL_PASSWORD"
            raise ValueError(msg)
        if not protocol.startswith("SASL") and (self.sasl_username or self.sasl_password):
            # Silently ignored credentials would mean an unauthenticated, unencrypted connection.
            msg = (
                f"GPM_KAFKA__SASL_USERNAME/PASSWORD are set but GPM_KAFKA__SECURITY_PROTOCOL is {protocol}, "
                "which sends no credentials: set it to SASL_SSL (or SASL_PLAINTEXT)"
            )
            raise ValueError(msg)
        files = {"ssl_cafile": self.ssl_cafile, "ssl_certfile": self.ssl_certfile, "ssl_keyfile": self.ssl_keyfile}
        named = [f"GPM_KAFKA__{name.upper()}" for name, path in files.items() if path is not None]
        if named and protocol not in {"SSL", "SASL_SSL"}:
            msg = f"{', '.join(named)} set but GPM_KAFKA__SECURITY_PROTOCOL is {protocol} (no TLS): set SSL or SASL_SSL"
            raise ValueError(msg)
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            msg = "GPM_KAFKA__SSL_CERTFILE and GPM_KAFKA__SSL_KEYFILE go together (a client certificate and its key)"
            raise ValueError(msg)
        _check_files("KAFKA", files)
        remote = [s for s in self.bootstrap_servers.split(",") if not is_local_host(s.rpartition(":")[0])]
        if protocol == "SASL_PLAINTEXT" and remote and not self.allow_plaintext_credentials:
            msg = (
                f"GPM_KAFKA__SECURITY_PROTOCOL SASL_PLAINTEXT sends the credentials to {remote[0]} unencrypted: "
                f"use SASL_SSL, or set GPM_KAFKA__{_PLAINTEXT_OPT_IN}=true if that network is trusted"
            )
            raise ValueError(msg)
        return self

    def client_options(self) -> dict[str, Any]:
        """Connection keyword arguments shared by every aiokafka client (consumer, producer, admin)."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in {"SSL", "SASL_SSL"}:
            from aiokafka.helpers import create_ssl_context  # noqa: PLC0415 - aiokafka costs 0.2 s to import

            options["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            )
        if self.security_protocol.startswith("SASL"):
            assert self.sasl_password is not None  # noqa: S101 - checked by the validator
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        return options

    @field_validator("topic_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            msg = f"not a valid regular expression: {exc}"
            raise ValueError(msg) from exc
        return value


class PostgresSettings(BaseModel):
    """PostgreSQL, the system of record for what was applied."""

    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    min_pool_size: int = Field(1, ge=0)
    max_pool_size: int = Field(10, ge=1)
    command_timeout_s: float = Field(60.0, gt=0)
    # Idle connections older than this are closed and reopened on demand (recycling).
    max_inactive_connection_lifetime_s: float = Field(300.0, ge=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    # A password sent to another host without sslmode=require/verify-ca/verify-full is
    # refused unless this says it is meant (libpq's default, prefer, falls back to plaintext).
    allow_plaintext_credentials: bool = False

    @field_validator("dsn")
    @classmethod
    def _is_postgres_url(cls, value: SecretStr) -> SecretStr:
        problem = _url_problem(value.get_secret_value(), {"postgres", "postgresql"})
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _tls_as_meant(self) -> PostgresSettings:
        parts = urlsplit(self.dsn.get_secret_value())
        query = {key.lower(): value for key, value in parse_qsl(parts.query, keep_blank_values=True)}
        for parameter in ("sslrootcert", "sslcert", "sslkey"):
            # "system" is libpq's word for the operating system's store, not a file.
            if (path := query.get(parameter)) and path != "system" and (problem := file_problem(Path(path))):
                msg = f"GPM_POSTGRES__DSN: its {parameter} {problem}"
                raise ValueError(msg)
        sslmode = query.get("sslmode", "prefer")
        host = query.get("host") or parts.hostname
        has_password = parts.password is not None or "password" in query
        plaintext = sslmode in {"disable", "allow", "prefer"}
        if has_password and plaintext and not is_local_host(host) and not self.allow_plaintext_credentials:
            msg = (
                f"GPM_POSTGRES__DSN sends a password to {host} without requiring TLS (sslmode={sslmode}; "
                "prefer, the default, falls back to plaintext): add sslmode=verify-full&sslrootcert=<CA file>, "
                f"or set GPM_POSTGRES__{_PLAINTEXT_OPT_IN}=true if that network is trusted"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _pool_bounds(self) -> PostgresSettings:
        if self.min_pool_size > self.max_pool_size:
            msg = "GPM_POSTGRES__MIN_POOL_SIZE must not exceed GPM_POSTGRES__MAX_POOL_SIZE"
            raise ValueError(msg)
        return self

    @property
    def redacted_dsn(self) -> str:
        """The DSN for logs and errors: every credential replaced by ``***``."""
        return mask_dsn(self.dsn.get_secret_value())


class GraphSettings(BaseModel):
    """The graph store: Neo4j 5 over Bolt (official driver), or FalkorDB (native protocol).

    ``uri``, ``user`` and ``database`` default per backend: ``bolt://127.0.0.1:7687``,
    ``neo4j``, ``neo4j`` for Neo4j; ``redis://127.0.0.1:6379``, ``default``, ``gpm`` (the
    graph's key) for FalkorDB.
    """

    backend: GraphBackendName = "neo4j"
    uri: str = ""
    user: str = ""
    password: SecretStr = SecretStr("")
    database: str = ""
    max_connection_pool_size: int = Field(20, ge=1)
    # Connections older than this are closed when returned to the pool (recycling; Neo4j).
    max_connection_lifetime_s: float = Field(3600.0, gt=0)
    connection_acquisition_timeout_s: float = Field(60.0, gt=0)
    connection_timeout_s: float = Field(10.0, gt=0)
    # How long the driver itself retries a transient failure of a managed transaction
    # before the saga's own retry (and rewind) takes over (Neo4j).
    max_transaction_retry_time_s: float = Field(15.0, ge=0)
    # Upper bound for one batch's write transaction (FalkorDB: its one query), server-side.
    transaction_timeout_s: float = Field(120.0, gt=0)
    # Bolt only. "auto": a handful of statements with dynamic labels on Neo4j 5.26 and later,
    # a statement per label group elsewhere (ArcadeDB, older Neo4j); "grouped" forces the latter.
    write_shape: Literal["auto", "grouped"] = "auto"
    # The CA that signed the graph server's certificate (a private CA), for a TLS URI
    # (bolt+s://, neo4j+s://, rediss://, falkors://); unset: the system's trust store.
    ca_file: Path | None = None
    # A password sent to another host over bolt://, neo4j://, redis:// or falkor:// is
    # refused unless this says it is meant.
    allow_plaintext_credentials: bool = False

    @model_validator(mode="after")
    def _backend_defaults(self) -> GraphSettings:
        defaults = _GRAPH_DEFAULTS[self.backend]
        self.uri = self.uri or defaults["uri"]
        problem = _url_problem(self.uri, _GRAPH_SCHEMES[self.backend])
        if problem:
            msg = f"GPM_GRAPH__URI {problem} (backend {self.backend})"
            raise ValueError(msg)
        self._credentials_apart()
        self.user = self.user or defaults["user"]
        self.database = self.database or defaults["database"]
        self._tls_as_meant()
        return self

    @property
    def uses_tls(self) -> bool:
        """The URI's scheme asks for TLS."""
        return urlsplit(self.uri).scheme in _TLS_SCHEMES

    def _tls_as_meant(self) -> None:
        scheme, host = urlsplit(self.uri).scheme, urlsplit(self.uri).hostname
        if self.ca_file is not None:
            if scheme.endswith("+ssc"):
                msg = f"GPM_GRAPH__CA_FILE is set but GPM_GRAPH__URI is {scheme}://, which trusts any certificate: use {scheme[:-4]}+s://"
                raise ValueError(msg)
            if not self.uses_tls:
                msg = f"GPM_GRAPH__CA_FILE is set but GPM_GRAPH__URI is {scheme}://, which uses no TLS: use {_TLS_OF[scheme]}://"
                raise ValueError(msg)
            _check_files("GRAPH", {"ca_file": self.ca_file})
        plaintext = not self.uses_tls and not scheme.endswith("+ssc") and scheme != "unix"
        if (
            plaintext
            and self.password.get_secret_value()
            and not is_local_host(host)
            and not self.allow_plaintext_credentials
        ):
            msg = (
                f"GPM_GRAPH__PASSWORD would be sent to {host} unencrypted ({scheme}://): use {_TLS_OF[scheme]}:// "
                f"(with GPM_GRAPH__CA_FILE for a private CA), or set GPM_GRAPH__{_PLAINTEXT_OPT_IN}=true if that "
                "network is trusted"
            )
            raise ValueError(msg)

    def _credentials_apart(self) -> None:
        """Credentials written into the URI move to ``user`` and ``password``: the URI is never a secret."""
        parts = urlsplit(self.uri)
        if parts.username is None and parts.password is None:
            return
        if (parts.username and self.user) or (parts.password and self.password.get_secret_value()):
            msg = "GPM_GRAPH__URI holds credentials and GPM_GRAPH__USER/PASSWORD are set too; keep one"
            raise ValueError(msg)
        self.user = unquote(parts.username or "") or self.user
        if parts.password is not None:
            self.password = SecretStr(unquote(parts.password))
        host = parts.netloc.rpartition("@")[2]
        self.uri = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


_GRAPH_DEFAULTS = {
    "neo4j": {"uri": "bolt://127.0.0.1:7687", "user": "neo4j", "database": "neo4j"},
    "falkordb": {"uri": "redis://127.0.0.1:6379", "user": "default", "database": "gpm"},
}
_GRAPH_SCHEMES = {
    "neo4j": {"bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"},
    # rediss:// and falkors:// are TLS; unix:// a local socket.
    "falkordb": {"redis", "rediss", "falkor", "falkors", "unix"},
}
_TLS_OF = {
    "bolt": "bolt+s",
    "neo4j": "neo4j+s",
    "redis": "rediss",
    "falkor": "falkors",
    "bolt+ssc": "bolt+s",
    "neo4j+ssc": "neo4j+s",
}
_TLS_SCHEMES = frozenset({"bolt+s", "neo4j+s", "rediss", "falkors"})


class HealthSettings(BaseModel):
    """The probe and metrics server."""

    enabled: bool = True
    host: str = Field("0.0.0.0", pattern=f"^{_HOST.pattern}$")  # noqa: S104 - probes come from the kubelet, outside the pod
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port
    # Longer than the worst batch plus the saga's retry window: a slow batch is not a hang.
    liveness_timeout_s: float = Field(300.0, gt=0)
    check_timeout_s: float = Field(2.0, gt=0)


class WorkerSettings(BaseModel):
    """Batching, limits, retries and shutdown."""

    # Target graph rows (nodes + edges) per batch and per UNWIND statement. Unset: the
    # backend's figure (worker/compose.py): 1000, the seed's, over Bolt; 4000 on FalkorDB,
    # where each write query pays a cost that grows with the graph (docs/benchmark.md).
    transaction_size: int | None = Field(None, ge=1, le=100_000)
    # How long the first event of a batch may wait for the batch to fill.
    linger_ms: int = Field(200, ge=0, le=60_000)
    max_event_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_nodes_per_graph: int = Field(1_000_000, ge=1)
    # Child processes that decode and validate events (0: a thread of the worker's own).
    # One takes decoding off the GIL the event loop needs (see docs/architecture.md).
    decode_processes: int = Field(1, ge=0, le=16)
    # Batches applied at once when they write disjoint sources and hold no intent event;
    # their offsets are still committed in order (see worker/consume/inflight.py). Unset:
    # the graph server's figure (GraphBackend.parallel_batches): 2 on FalkorDB and Neo4j
    # 5.26+ (measured faster), 1 on ArcadeDB, where two writers halved the throughput and
    # raced creating a label's type (a refusal the saga now tries again).
    batches_in_flight: int | None = Field(None, ge=1, le=8)
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    # How long one saga keeps retrying a transient store failure before it hands the
    # batch back to the consumer (which rewinds and tries again later).
    retry_window_s: float = Field(60.0, gt=0)
    shutdown_grace_s: float = Field(30.0, ge=0)
    # One attempt to connect and migrate at start; a hung attempt is retried, not waited on.
    start_attempt_timeout_s: float = Field(30.0, gt=0)
    # Check server versions and rights at start (see worker/preflight.py) before migrating.
    preflight: bool = True
    # How long a missing graph database is waited for at start before the worker gives up.
    database_wait_s: float = Field(60.0, ge=0)
    # The bound on waiting intent links: a link whose AST node has not arrived after this
    # long is reported as unresolved (error log, metric). It stays stored and is still
    # attached if the node comes later: nothing is dropped.
    parked_link_ttl_s: float = Field(24 * 3600.0, gt=0)
    parked_report_interval_s: float = Field(60.0, gt=0)
    # Processed-event rows and finished (applied, abandoned) outbox rows older than this are
    # deleted, a chunk at a time, by one replica every prune interval. A replay of older
    # records stays a no-op: the registry's versions supersede them (tests/integration/
    # test_bookkeeping.py). At least an hour, so redeliveries around a rebalance or a
    # restart still meet the ledger.
    bookkeeping_retention_s: float = Field(7 * 24 * 3600.0, ge=3600)
    bookkeeping_prune_interval_s: float = Field(600.0, gt=0)
    # Kafka Connect's errors.tolerance: "all" dead-letters what cannot be applied and goes on;
    # "none" stops the worker at such a record (uncommitted), for teams that prefer to halt.
    errors_tolerance: Literal["all", "none"] = "all"
    # Fault tests only: the process kills itself (SIGKILL) when the saga reaches this step.
    crash_at: CrashPoint | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"


class Settings(BaseSettings):
    """All settings; construct with :func:`load_settings` to get errors naming the setting."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
        secrets_nested_delimiter="__",
        secrets_dir_missing="error",
    )

    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    graph: GraphSettings = GraphSettings()
    worker: WorkerSettings = WorkerSettings()
    health: HealthSettings = HealthSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],  # noqa: ARG003 - the hook's fixed signature
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The usual order, with secret files read per nested field (``GPM_POSTGRES__DSN``)."""
        secrets = NestedSecretsSettingsSource(file_secret_settings)
        return init_settings, env_settings, dotenv_settings, secrets


def load_settings(env_file: Path | None = None, secrets_dir: Path | None = None) -> Settings:
    """Load and validate the settings, or raise ConfigError naming each bad variable.

    ``secrets_dir`` (default: ``$GPM_SECRETS_DIR``) holds one file a variable; the
    environment wins over a file, as pydantic-settings orders its sources.
    The message never includes the offending value: it may be a secret.
    """
    if secrets_dir is None and os.environ.get(SECRETS_DIR_VARIABLE):
        secrets_dir = Path(os.environ[SECRETS_DIR_VARIABLE])
    if secrets_dir is not None and not secrets_dir.is_dir():
        # Refused here so the message names the variable; a secret that silently never
        # loads would be an outage later.
        raise ConfigError(f"invalid settings: {SECRETS_DIR_VARIABLE}: {secrets_dir} is not a directory")
    try:
        return Settings(_env_file=env_file or ".env", _secrets_dir=secrets_dir)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            name = ENV_PREFIX + "__".join(str(part).upper() for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            # A check across fields names its variables itself; a section name before it would
            # point at GPM_KAFKA, which nobody sets.
            problems.append(message if message.startswith(ENV_PREFIX) else f"{name}: {message}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    except SettingsError as exc:
        # A whole section given as one variable (GPM_KAFKA='...') that is not JSON.
        section = next((name for name in Settings.model_fields if f'"{name}"' in str(exc)), "")
        where = f"{ENV_PREFIX}{section.upper()}" if section else "a GPM_* variable"
        msg = f"invalid settings: {where}: not valid JSON; set its fields one by one as {where}__<FIELD>"
        raise ConfigError(msg) from None


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``GPM_*`` variables that name no setting (a misspelling is otherwise ignored in silence)."""
    known = set()
    for section, field in Settings.model_fields.items():
        known.add(f"{ENV_PREFIX}{section}".upper())
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            known.update(f"{ENV_PREFIX}{section}__{name}".upper() for name in annotation.model_fields)
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and not name.upper().startswith(TEST_PREFIX)
        and name.upper() not in known
        and name.upper() not in {SECRETS_DIR_VARIABLE, "GPM_TRACEBACK"}  # the CLI's own switch
    )
