"""Settings, loaded once from the environment, ``.env`` and a secrets directory.

Every variable is prefixed ``GPM_`` and nested sections use ``__``, e.g.
``GPM_WORKER__TRANSACTION_SIZE=1000`` or ``GPM_POSTGRES__DSN=postgresql://...``.
Secrets are ``SecretStr`` and the helpers here render DSNs with the password masked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import ConfigError
from worker.failpoints import CrashPoint

ENV_PREFIX = "GPM_"
# Topics this worker consumes: ast-graphs, ast-graphs.<name>, intent-links; never their
# dead-letter topics (".dlq"), which would otherwise match the ast-graphs.<name> form.
DEFAULT_TOPIC_PATTERN = r"^(?!.*\.dlq$)(ast-graphs(\.[A-Za-z0-9_-]+)*|intent-links)$"


class KafkaSettings(BaseModel):
    """Broker connection and consumer-group behaviour."""

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "graph-postgres-manager"
    client_id: str = "graph-postgres-manager"
    topic_pattern: str = DEFAULT_TOPIC_PATTERN
    dlq_suffix: str = ".dlq"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
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

    @model_validator(mode="after")
    def _sasl_has_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            msg = f"security_protocol {self.security_protocol} needs sasl_username and sasl_password"
            raise ValueError(msg)
        return self

    def client_options(self) -> dict[str, Any]:
        """Connection keyword arguments shared by every aiokafka client (consumer, producer, admin)."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in {"SSL", "SASL_SSL"}:
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

    @field_validator("dsn")
    @classmethod
    def _is_postgres_url(cls, value: SecretStr) -> SecretStr:
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in {"postgres", "postgresql"}:
            msg = "must be a postgresql:// URL"
            raise ValueError(msg)
        return value


class GraphSettings(BaseModel):
    """The graph store: Neo4j 5 over Bolt (official driver), or FalkorDB (native protocol).

    ``uri``, ``user`` and ``database`` default per backend: ``bolt://127.0.0.1:7687``,
    ``neo4j``, ``neo4j`` for Neo4j; ``redis://127.0.0.1:6379``, ``default``, ``gpm`` (the
    graph's key) for FalkorDB.
    """

    backend: Literal["neo4j", "falkordb"] = "neo4j"
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

    @model_validator(mode="after")
    def _backend_defaults(self) -> GraphSettings:
        defaults = _GRAPH_DEFAULTS[self.backend]
        self.uri = self.uri or defaults["uri"]
        self.user = self.user or defaults["user"]
        self.database = self.database or defaults["database"]
        scheme = urlsplit(self.uri).scheme
        if scheme not in _GRAPH_SCHEMES[self.backend]:
            schemes = ", ".join(f"{s}://" for s in sorted(_GRAPH_SCHEMES[self.backend]))
            msg = f"uri: backend {self.backend} needs one of {schemes}"
            raise ValueError(msg)
        return self


_GRAPH_DEFAULTS = {
    "neo4j": {"uri": "bolt://127.0.0.1:7687", "user": "neo4j", "database": "neo4j"},
    "falkordb": {"uri": "redis://127.0.0.1:6379", "user": "default", "database": "gpm"},
}
_GRAPH_SCHEMES = {
    "neo4j": {"bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"},
    # rediss:// and falkors:// are TLS; unix:// a local socket.
    "falkordb": {"redis", "rediss", "falkor", "falkors", "unix"},
}


class HealthSettings(BaseModel):
    """The probe and metrics server."""

    enabled: bool = True
    host: str = "0.0.0.0"  # noqa: S104 - probes come from the kubelet, outside the pod
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port
    # Longer than the worst batch plus the saga's retry window: a slow batch is not a hang.
    liveness_timeout_s: float = Field(300.0, gt=0)
    check_timeout_s: float = Field(2.0, gt=0)


class WorkerSettings(BaseModel):
    """Batching, limits, retries and shutdown."""

    # Target graph rows (nodes + edges) per batch and per UNWIND statement: the seed's 1000.
    transaction_size: int = Field(1000, ge=1, le=100_000)
    # How long the first event of a batch may wait for the batch to fill.
    linger_ms: int = Field(200, ge=0, le=60_000)
    max_event_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_nodes_per_graph: int = Field(1_000_000, ge=1)
    # Child processes that decode and validate events (0: a thread of the worker's own).
    # One takes decoding off the GIL the event loop needs (see docs/architecture.md).
    decode_processes: int = Field(1, ge=0, le=16)
    # Batches applied at once when they write disjoint sources and hold no intent event;
    # their offsets are still committed in order (see worker/consume/inflight.py). Unset:
    # 2 on FalkorDB (measured faster), 1 over Bolt: on ArcadeDB two writers halved the
    # throughput and raced creating a label's type (a refusal the saga now tries again).
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
    )

    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    graph: GraphSettings = GraphSettings()
    worker: WorkerSettings = WorkerSettings()
    health: HealthSettings = HealthSettings()


def batches_in_flight(settings: Settings) -> int:
    """``worker.batches_in_flight``, or the graph backend's default when it is unset."""
    if settings.worker.batches_in_flight is not None:
        return settings.worker.batches_in_flight
    return 2 if settings.graph.backend == "falkordb" else 1


def load_settings(env_file: Path | None = None, secrets_dir: Path | None = None) -> Settings:
    """Load and validate the settings, or raise ConfigError naming each bad variable.

    The message never includes the offending value: it may be a secret.
    """
    try:
        return Settings(_env_file=env_file or ".env", _secrets_dir=secrets_dir)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            name = ENV_PREFIX + "__".join(str(part).upper() for part in error["loc"])
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


def mask_dsn(dsn: str) -> str:
    """Return the DSN with any password replaced by ``***``."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
