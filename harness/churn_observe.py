"""What ``harness.churn`` watches: the group's committed offsets and members over time, and the outcome
(verdict rows in PostgreSQL, verdict messages and dead letters on their topics)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from ingest.db import connect
from ingest.kafka import make_admin
from ingest.settings import StackSettings
from ingest.topics import IMAGES_VERDICTS, dlq_topic

logger = logging.getLogger(__name__)


def end_offsets(stack: StackSettings, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(**stack.kafka.client_kwargs())
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        return dict(consumer.end_offsets(tps))
    finally:
        consumer.close()


def start_group_at_end(stack: StackSettings, group: str, topic: str) -> dict[TopicPartition, int]:
    """Commit ``topic``'s current end for the new, empty ``group``: it then reads only what comes after."""
    ends = end_offsets(stack, topic)
    admin = make_admin(stack.kafka)
    try:
        errors = admin.alter_group_offsets(
            group, {tp: OffsetAndMetadata(o, "", -1) for tp, o in ends.items()}
        )
    finally:
        admin.close()
    failed = {tp: e for tp, e in errors.items() if getattr(e, "errno", 0)}
    if failed:
        raise RuntimeError(f"could not set the starting offsets of {group}: {failed}")
    return ends


@dataclass
class Sample:
    t: float  # seconds since the run started
    offsets: dict[int, int]  # partition -> committed offset (partitions without a commit are absent)
    state: str
    members: list[str]  # client ids


class OffsetSampler:
    """Samples ``group``'s committed offsets and members every ``interval`` s on a thread of its own.

    A decrease is a committed offset lower than the one the previous sample saw for that partition: a
    commit moved it back, which would re-deliver records (and, had it gone forward past unprocessed ones
    before, hide a loss).
    """

    def __init__(
        self, stack: StackSettings, group: str, topic: str, t0: float, interval: float = 0.5
    ) -> None:
        self.stack, self.group, self.topic, self.t0, self.interval = stack, group, topic, t0, interval
        self.samples: list[Sample] = []
        self.decreases: list[dict[str, Any]] = []
        self.failures = 0
        self._latest: dict[int, int] = {}
        self._members: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._admin: KafkaAdminClient | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="offset-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling after one last sample (taken once every member has gone); idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.sample_once()
        self._close_admin()

    def members(self) -> set[str]:
        with self._lock:
            return set(self._members)

    def committed(self) -> dict[int, int]:
        with self._lock:
            return dict(self._latest)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample_once()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def sample_once(self) -> None:
        try:
            if self._admin is None:
                self._admin = make_admin(self.stack.kafka)
            offsets = self._admin.list_group_offsets({self.group: None}).get(self.group) or {}
            info = self._admin.describe_groups([self.group]).get(self.group) or {}
        except KafkaError as e:  # e.g. the coordinator is loading: a missed sample, not a finding
            self.failures += 1
            logger.warning("offset sample failed: %s: %s", type(e).__name__, e)
            self._close_admin()
            return
        mine = {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == self.topic}
        members = [str(m.get("client_id")) for m in info.get("members") or []]
        sample = Sample(round(time.monotonic() - self.t0, 3), mine, str(info.get("group_state")), members)
        with self._lock:
            for p, offset in sorted(sample.offsets.items()):
                before = self._latest.get(p)
                if before is not None and offset < before:
                    self.decreases.append({"t": sample.t, "partition": p, "before": before, "after": offset})
                    logger.error("committed offset of partition %d went back: %d -> %d", p, before, offset)
            self._latest.update(sample.offsets)
            self._members = set(members)
            self.samples.append(sample)

    def _close_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):  # closing a broken client: nothing left to save
                self._admin.close()
        self._admin = None

    def membership_changes(self) -> int:
        """How often the sampled member list changed: rebalances the samples caught (a lower bound)."""
        lists = [tuple(sorted(s.members)) for s in self.samples]
        return sum(1 for a, b in itertools.pairwise(lists) if a != b)


def read_keys(
    stack: StackSettings, since: dict[TopicPartition, int], until: dict[TopicPartition, int]
) -> list[tuple[str, int, int]]:
    """(key, partition, offset) of every keyed record in ``[since, until)`` per partition. The scorer keys
    verdicts and dead letters by the input record's key, the image id."""
    todo = [tp for tp in until if until[tp] > since.get(tp, 0)]
    if not todo:
        return []
    consumer = KafkaConsumer(**stack.kafka.client_kwargs(), enable_auto_commit=False)
    out: list[tuple[str, int, int]] = []
    try:
        consumer.assign(todo)
        for tp in todo:
            consumer.seek(tp, since.get(tp, 0))
        deadline = time.monotonic() + 120
        while todo and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                out.extend(
                    (m.key.decode(), m.partition, m.offset)
                    for m in msgs
                    if m.key is not None and m.offset < until[tp]
                )
            todo = [tp for tp in todo if consumer.position(tp) < until[tp]]
        if todo:
            raise TimeoutError(f"could not read {todo} up to {until}")
        return out
    finally:
        consumer.close()


def dropped_on_revocation(log_text: str) -> int:
    """Records a scorer's loop dropped from a batch because their partition was revoked (from its log)."""
    return sum(int(m.group(1)) for m in _DROPPED.finditer(log_text))


_DROPPED = re.compile(r"rebalance: dropped (\d+) records of revoked partitions")


def verdict_rows(stack: StackSettings, ids: list[str]) -> dict[str, int]:
    """image id -> number of verdict rows (every model version)."""
    with contextlib.closing(connect(stack.pg)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT image_id, count(*) FROM verdicts WHERE image_id = ANY(%s) GROUP BY image_id", (ids,)
        )
        return {str(r[0]): int(r[1]) for r in cur.fetchall()}


def model_versions(stack: StackSettings, ids: list[str]) -> list[str]:
    with contextlib.closing(connect(stack.pg)) as conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT model_version FROM verdicts WHERE image_id = ANY(%s)", (ids,))
        return sorted(str(r[0]) for r in cur.fetchall())


def evaluate(
    stack: StackSettings, ids: list[str], topic: str, since: dict[str, dict[Any, int]], sampler: OffsetSampler
) -> dict[str, Any]:
    """Counts and offsets at the end; ``since``: the offsets of the input, verdict and dead-letter topics
    before the first image was published."""
    rows = verdict_rows(stack, ids)
    mine = set(ids)
    messages = Counter(
        k for k, _p, _o in read_keys(stack, since["verdicts"], end_offsets(stack, IMAGES_VERDICTS))
    )
    letters = Counter(k for k, _p, _o in read_keys(stack, since["dlq"], end_offsets(stack, dlq_topic(topic))))
    ends = {tp.partition: o for tp, o in end_offsets(stack, topic).items()}
    lost = mine - set(rows)
    where = {
        k: (p, o) for k, p, o in read_keys(stack, since["input"], end_offsets(stack, topic)) if k in lost
    }
    final = sampler.committed()
    return {
        "counts": {
            "submitted": len(ids),
            "verdict_rows": sum(rows.values()),
            "images_with_verdict": len(rows),
            "duplicate_rows": sum(n - 1 for n in rows.values()),
            "lost": len(lost),
            "model_versions": model_versions(stack, ids),
            "verdict_messages": sum(n for k, n in messages.items() if k in mine),
            "verdict_messages_redelivered": sum(n - 1 for k, n in messages.items() if k in mine),
            "images_without_verdict_message": len(mine - set(messages)),
            "dlq": sum(n for k, n in letters.items() if k in mine),
        },
        # where the lost images' records were: compare with the scorers' logs (rebalances, drops, commits)
        "lost_records": [
            {
                "image_id": k,
                "partition": where.get(k, (None, None))[0],
                "offset": where.get(k, (None, None))[1],
            }
            for k in sorted(lost)[:50]
        ],
        "samples": len(sampler.samples),
        "sample_failures": sampler.failures,
        "decreases": sampler.decreases,
        "final_committed": {str(p): o for p, o in sorted(final.items())},
        "log_end": {str(p): o for p, o in sorted(ends.items())},
        "not_drained": {str(p): [final.get(p), e] for p, e in sorted(ends.items()) if final.get(p, 0) != e},
    }
