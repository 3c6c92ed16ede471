"""What the consumer loop does with a batch in flight when a rebalance takes partitions away.

kafka-python runs the rebalance listener inside ``poll()``, so a batch assembled over several polls can
hold records of a partition that was revoked in between. The old owner must neither handle nor commit
them: they are dropped, and whoever owns the partition now reads them from the group's committed offset.

That owner may be this member again. kafka-python revokes every partition and, when one comes back to the
same member, keeps its fetch position (past the dropped records): left alone, the records would never be
read again and the next commit would pass over them. So a revoked partition that is still assigned is
sought back to its first dropped record (what the group's committed offset points at, as nobody else owned
the partition in between), and its records from the same poll, which follow the dropped ones, are dropped
too. Not ``consumer.committed()``: called while the group rebalances again, it waits for a coordinator that
waits for this member's next poll.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kafka import TopicPartition

from ingest.batch import Record
from ingest.loop_config import ConsumerLike

logger = logging.getLogger(__name__)


def without_revoked(
    consumer: ConsumerLike, gone: set[TopicPartition], records: Iterable[Record]
) -> list[Record]:
    """``records`` less those of the ``gone`` partitions; a gone partition assigned back is rewound."""
    kept: list[Record] = []
    first: dict[TopicPartition, int] = {}
    dropped = 0
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        if tp in gone:
            first[tp] = min(first.get(tp, r.offset), r.offset)
            dropped += 1
        else:
            kept.append(r)
    back = set(first) & set(consumer.assignment())
    for tp in back:
        consumer.seek(tp, first[tp])
    if dropped:
        logger.info(
            "rebalance: dropped %d records of revoked partitions from the batch; %d of their %d partitions "
            "came back to this member and are read again from the first dropped record",
            dropped,
            len(back),
            len(first),
        )
    return kept
