"""Empty a whole graph database between runs on a server the tests and the bench share."""

from __future__ import annotations

from worker.ports import GraphBackend


async def wipe(graph: GraphBackend, per_transaction: int = 10_000) -> None:
    """Delete every node and relationship, ``per_transaction`` nodes a transaction.

    A loop of plain statements rather than ``CALL { ... } IN TRANSACTIONS``, whose
    ``WITH`` import form Neo4j 5.26 reports as deprecated and whose replacement
    ``CALL (n) { ... }`` older servers do not parse.
    """
    while True:
        deleted = await graph.query(
            "MATCH (n) WITH n LIMIT $limit DETACH DELETE n RETURN count(*) AS deleted", {"limit": per_transaction}
        )
        if not deleted or deleted[0]["deleted"] == 0:
            return
