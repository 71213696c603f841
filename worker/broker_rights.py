"""What the broker lets this worker do with its topics, where the broker says.

Kafka reports a user's rights on a topic in its metadata (v8 and later, KIP-430:
``topic_authorized_operations``, a bit per ACL operation). aiokafka 0.14 speaks Metadata
up to v5, so the v8 request and response are written out here (the same fields as the
protocol's JSON specification, non-flexible, so plain arrays and strings). A broker that
does not answer v8, or has no authorizer to ask, is "not reported": nothing is assumed.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from aiokafka.conn import create_conn
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

from worker.config import KafkaSettings

# Kafka's AclOperation codes, as bit positions of an "authorized operations" field.
READ, WRITE = 3, 4
NOT_REPORTED = -(2**31)


class _MetadataResponseV8(Response):  # type: ignore[misc] # aiokafka is untyped
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", Array(("node_id", Int32), ("host", String("utf-8")), ("port", Int32), ("rack", String("utf-8")))),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("name", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", Array(Int32)),
                        ("isr_nodes", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("topic_authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequestV8(RequestStruct):  # type: ignore[misc] # as above
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponseV8
    SCHEMA = Schema(
        ("topics", Array(Schema(("name", String("utf-8"))))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class _TopicRights(Request[_MetadataRequestV8]):  # type: ignore[misc] # as above
    API_KEY = 3
    # Sent on a connection of its own, before any version negotiation: v8 or nothing.
    ALLOW_UNKNOWN_API_VERSION: ClassVar[bool] = True

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_MetadataRequestV8]) -> _MetadataRequestV8:
        # Never creates a topic: a check must not change the cluster.
        return request_struct_class([(t,) for t in self._topics], False, False, True)  # noqa: FBT003


async def topic_rights(kafka: KafkaSettings, topics: list[str], timeout_s: float = 10.0) -> dict[str, int] | None:
    """Each topic's authorized-operations bits (``NOT_REPORTED`` where the broker has none to give); None if unasked.

    None: the broker did not answer Metadata v8 (too old, or another implementation).
    """
    host, _, port = kafka.bootstrap_servers.split(",")[0].rpartition(":")
    options = kafka.client_options()
    options.pop("bootstrap_servers")
    try:
        async with asyncio.timeout(timeout_s):
            conn = await create_conn(host.strip("[]"), int(port), client_id=f"{kafka.client_id}-rights", **options)
            try:
                response = (await conn.send(_TopicRights(topics))).to_object()
            finally:
                conn.close()
    except Exception:  # noqa: BLE001 - any failure means the broker does not tell; the caller says so
        return None
    return {t["name"]: t["topic_authorized_operations"] for t in response["topics"] if t["error_code"] == 0}
