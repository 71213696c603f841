"""`gpm topics ensure`: the topics the worker reads and dead-letters to, created as the settings imply.

A topic that already exists is never changed (its partitions, replication and configs are
the operator's); a missing one is created with:

- ``max.message.bytes`` of ``GPM_WORKER__MAX_EVENT_BYTES`` plus room for headers, on the
  consumed topics and their dead-letter topics alike (a dead letter carries the original):
  a broker's default of 1 MB refuses the graphs of big source files;
- the partitions asked for (they bound the replicas that can share the work);
- a replication factor of three, or as many brokers as the cluster has if fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from worker.broker import explained
from worker.config import Settings
from worker.errors import StoreUnavailable

# The topics of the default pattern; a custom pattern names its own with --topic.
HEADER_ROOM = 64 * 1024
MAX_REPLICATION = 3


@dataclass(frozen=True, slots=True)
class TopicsReport:
    """What `ensure_topics` found and did."""

    created: list[str]
    existing: list[str]
    partitions: int
    replication: int
    max_message_bytes: int


def topic_configs(settings: Settings) -> dict[str, str]:
    """The configs a created topic gets."""
    return {"max.message.bytes": str(settings.worker.max_event_bytes + HEADER_ROOM)}


async def ensure_topics(settings: Settings, topics: list[str], partitions: int) -> TopicsReport:
    """Create each topic and its dead-letter topic that is missing; leave the rest alone."""
    kafka = settings.kafka
    wanted = sorted({name for topic in topics for name in (topic, topic + kafka.dlq_suffix)})
    admin = AIOKafkaAdminClient(**kafka.client_options(), client_id=f"{kafka.client_id}-ops")
    try:
        async with explained(kafka):
            await admin.start()
        existing = set(await admin.list_topics())
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = max(1, min(MAX_REPLICATION, brokers))
        configs = topic_configs(settings)
        created = []
        for name in wanted:
            if name in existing:
                continue
            try:
                await admin.create_topics([NewTopic(name, partitions, replication, topic_configs=configs)])
            except TopicAlreadyExistsError:  # another replica or operator was first: theirs stands
                continue
            created.append(name)
    except KafkaError as exc:
        msg = f"the broker at {kafka.bootstrap_servers} refused to create topics: {type(exc).__name__}: {exc}"
        raise StoreUnavailable(msg) from exc
    finally:
        await admin.close()
    return TopicsReport(
        created=created,
        existing=sorted(set(wanted) & existing),
        partitions=partitions,
        replication=replication,
        max_message_bytes=int(configs["max.message.bytes"]),
    )
