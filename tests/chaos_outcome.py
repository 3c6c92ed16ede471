"""Reading a chaos run's outcome back from Kafka, PostgreSQL and MinIO, and judging it (tests/chaos.py)."""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from ingest.contracts import DeadLetter, decode
from ingest.db import connect
from ingest.errors import PermanentError
from ingest.kafka import make_admin
from ingest.settings import StackSettings
from ingest.storage import S3Store

EXPLAINED_LABELS = ("fake", "uncertain")  # the explainer's default policy, "flagged"


def end_offsets(settings: StackSettings, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(**settings.kafka.client_kwargs())
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        return dict(consumer.end_offsets(tps))
    finally:
        consumer.close()


def group_members(settings: StackSettings, group: str) -> set[str] | None:
    """The member ids of ``group`` while it is Stable; None while it rebalances (or cannot be asked)."""
    try:
        admin = make_admin(settings.kafka)
        try:
            info = admin.describe_groups([group]).get(group) or {}
        finally:
            admin.close()
    except KafkaError:
        return None
    if info.get("group_state") != "Stable":
        return None
    return {str(m.get("member_id")) for m in info.get("members") or []}


def start_groups_at_end(settings: StackSettings, groups: dict[str, str]) -> None:
    """Commit the current end of each topic for its (new, empty) group, so a reused stack's history is not
    consumed: the run sees exactly its own records."""
    admin = make_admin(settings.kafka)
    pause = threading.Event()
    try:
        for group, topic in groups.items():
            offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in end_offsets(settings, topic).items()}
            deadline = time.monotonic() + 60
            while True:
                try:
                    admin.alter_group_offsets(group, offsets)
                    break
                except KafkaError as e:
                    # A fresh broker creates __consumer_offsets on the first coordinator lookup: retriable.
                    if not e.retriable or time.monotonic() > deadline:
                        raise
                    pause.wait(0.5)
    finally:
        admin.close()


class TopicReader:
    """Reads a topic from given offsets, incrementally: ``records`` is (partition, offset) -> (key, value)."""

    def __init__(self, settings: StackSettings, since: dict[TopicPartition, int]) -> None:
        self.consumer = KafkaConsumer(**settings.kafka.client_kwargs(), enable_auto_commit=False)
        self.consumer.assign(list(since))
        for tp, offset in since.items():
            self.consumer.seek(tp, offset)
        self.records: dict[tuple[int, int], tuple[bytes | None, bytes | None]] = {}

    def poll(self) -> None:
        while True:
            batch = self.consumer.poll(timeout_ms=200)
            if not batch:
                return
            for msgs in batch.values():
                for m in msgs:
                    self.records[(m.partition, m.offset)] = (m.key, m.value)

    def close(self) -> None:
        self.consumer.close()


def dead_letters(reader: TopicReader) -> dict[str, list[DeadLetter]]:
    out: dict[str, list[DeadLetter]] = {}
    for _key, value in reader.records.values():
        letter = decode(DeadLetter, value)
        image_id = base64.b64decode(letter.key_b64).decode() if letter.key_b64 else ""
        out.setdefault(image_id, []).append(letter)
    return out


def query(settings: StackSettings, sql: str, ids: list[str]) -> list[tuple[Any, ...]]:
    with connect(settings.pg) as conn, conn.cursor() as cur:
        cur.execute(sql, (ids,))
        return list(cur.fetchall())


def missing_objects(store: S3Store, rows: list[tuple[Any, ...]]) -> list[str]:
    keys = [key for row in rows for key in (row[3] or {}).values()]

    def gone(key: str) -> str | None:
        try:
            store.stat("explanations", key)
            return None
        except PermanentError:
            return key

    with ThreadPoolExecutor(8) as pool:
        return [k for k in pool.map(gone, keys) if k is not None]


def evaluate(
    s: StackSettings,
    good_ids: list[str],
    bad_codes: dict[str, str],
    dlq: TopicReader,
    verdict_msgs: TopicReader,
    explainer_dlq: TopicReader,
) -> dict[str, Any]:
    """The outcome of a run for the good image ids and the bad ones (id -> expected dead-letter code)."""
    ids = [*good_ids, *bad_codes]
    verdicts = query(s, "SELECT image_id, model_version, label FROM verdicts WHERE image_id = ANY(%s)", ids)
    expl = query(
        s, "SELECT image_id, model_version, method, keys FROM explanations WHERE image_id = ANY(%s)", good_ids
    )
    letters = dead_letters(dlq)
    good, bad = set(good_ids), set(bad_codes)
    verdict_ids = {r[0] for r in verdicts}
    flagged = {r[0] for r in verdicts if r[0] in good and r[2] in EXPLAINED_LABELS}
    dlq_ids = set(letters)
    wrong_reason = sorted(
        i
        for i in dlq_ids & bad
        if {dl.code for dl in letters[i]} != {bad_codes[i]} or not letters[i][0].reason
    )
    verdict_keys = Counter(r[0] for r in verdict_msgs.records.values() if r[0] is not None)
    mine = {i.encode() for i in good}
    explainer_letters = [k for k, _v in explainer_dlq.records.values() if k in mine]
    duplicates = (
        (len(verdicts) - len({(r[0], r[1]) for r in verdicts}))
        + (len(expl) - len({(r[0], r[1], r[2]) for r in expl}))
        + len(verdict_ids & dlq_ids)
    )
    return {
        "submitted": len(ids),
        "good": len(good),
        "bad": len(bad),
        "verdicts": len([r for r in verdicts if r[0] in good]),
        "verdict_images": len(verdict_ids & good),
        "model_versions": sorted({r[1] for r in verdicts}),
        "bad_with_verdict": len(verdict_ids & bad),
        "explanations": len(expl),
        "explanations_expected": len(flagged),
        "explanations_missing": len(flagged - {r[0] for r in expl}),
        "missing_objects": len(missing_objects(S3Store(s.s3), expl)),
        "dlq": len(dlq_ids & bad),
        "dlq_expected": len(bad),
        "dlq_unexpected": sorted(dlq_ids - bad)[:20],
        "dlq_wrong_reason": wrong_reason[:20],
        "dlq_reasons": dict(sorted(Counter(letters[i][0].code for i in dlq_ids & bad).items())),
        "explainer_dlq": len(explainer_letters),
        "duplicates": duplicates,
        "lost": len(good - verdict_ids - dlq_ids) + len(bad - dlq_ids),
        "verdict_messages_redelivered": sum(n - 1 for k, n in verdict_keys.items() if k in mine),
        "dlq_redelivered": sum(len(v) - 1 for v in letters.values()),
    }


def checks(r: dict[str, Any]) -> list[str]:
    failed = []
    if r["verdict_images"] != r["good"]:
        failed.append("every good image has a verdict")
    for key in ("bad_with_verdict", "explanations_missing", "missing_objects", "explainer_dlq"):
        if r[key]:
            failed.append(f"{key} == 0")
    if r["explanations"] < r["explanations_expected"]:
        failed.append("an explanation for every flagged verdict")
    if r["dlq"] != r["dlq_expected"] or r["dlq_unexpected"] or r["dlq_wrong_reason"]:
        failed.append("the DLQ holds exactly the bad images, each with its reason")
    for key in ("duplicates", "lost", "service_exits"):
        if r[key]:
            failed.append(f"{key} == 0")
    return failed


def drained(s: StackSettings, good_ids: list[str], bad_ids: list[str], dlq: TopicReader) -> bool:
    """Every bad image dead-lettered, every good one scored and, when flagged, explained."""
    dlq.poll()
    letters = dead_letters(dlq)
    if not set(bad_ids) <= set(letters):
        return False
    rows = query(s, "SELECT image_id, label FROM verdicts WHERE image_id = ANY(%s)", good_ids)
    if len(rows) < len(good_ids):
        return False
    flagged = [r[0] for r in rows if r[1] in EXPLAINED_LABELS]
    done = query(s, "SELECT count(DISTINCT image_id) FROM explanations WHERE image_id = ANY(%s)", flagged)
    return int(done[0][0]) >= len(flagged)
