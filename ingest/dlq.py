"""The operator's side of the dead-letter topics: list, show, and redrive dead letters to their source.

    python -m ingest dlq list    [--topic images.submitted] [--code C] [--service S] [--since 2h] [--limit N]
    python -m ingest dlq show    DLQ_PARTITION:OFFSET [--topic images.submitted]
    python -m ingest dlq redrive [filters as for list] [--dry-run]

A dead letter (``DeadLetter``) carries the original record's key and payload and where it came from. A
redrive publishes that key and payload on the source topic again, so the service that failed it (fixed by
now) processes it like any record. It is idempotent: each redriven dead letter is recorded in PostgreSQL
``dlq_redrives`` under its source topic/partition/offset *in the same transaction that is committed only
after the broker acknowledged the records*, and later redrives skip it. (A crash between the broker's
acknowledgement and that commit can send a record twice; the services' writes are upserts, so even that
changes no row.) Dead letters whose payload was cut to the DLQ's size limit are never redriven: they name
their source offset, and the whole record is still on the source topic until its retention ends.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from kafka import KafkaConsumer, TopicPartition
from psycopg2.extras import execute_values

from ingest.contracts import DeadLetter, decode
from ingest.db import transaction
from ingest.errors import InvalidMessage
from ingest.kafka import make_producer
from ingest.settings import StackSettings
from ingest.times import parse_since
from ingest.topics import IMAGES_SUBMITTED, dlq_topic

TRUNCATED = "[payload truncated"


@dataclass(frozen=True)
class Filters:
    code: str | None = None
    service: str | None = None
    since: datetime | None = None


@dataclass(frozen=True)
class Entry:
    """One record of a dead-letter topic: where it is, and the dead letter (None if it does not parse)."""

    partition: int
    offset: int
    letter: DeadLetter | None
    problem: str | None = None

    @property
    def truncated(self) -> bool:
        return self.letter is not None and self.letter.reason.startswith(TRUNCATED)


def read(stack: StackSettings, topic: str, filters: Filters = Filters()) -> Iterator[Entry]:
    """Every record of ``<topic>.dlq`` present now, in partition then offset order, that matches."""
    name = dlq_topic(topic)
    consumer = KafkaConsumer(**stack.kafka.client_kwargs(), enable_auto_commit=False)
    try:
        parts = sorted(consumer.partitions_for_topic(name) or [])
        if not parts:
            raise SystemExit(f"no topic {name}")
        tps = [TopicPartition(name, p) for p in parts]
        end = consumer.end_offsets(
            tps
        )  # what is there now: records dead-lettered meanwhile wait for next time
        for tp in tps:
            yield from _read_partition(consumer, tp, end[tp], filters)
    finally:
        consumer.close()


def _read_partition(consumer: KafkaConsumer, tp: TopicPartition, end: int, f: Filters) -> Iterator[Entry]:
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    while consumer.position(tp) < end:
        for msgs in consumer.poll(timeout_ms=1000).values():
            for m in msgs:
                if m.offset >= end:
                    return
                entry = _entry(tp.partition, m.offset, m.value)
                if _matches(entry, f):
                    yield entry


def _entry(partition: int, offset: int, value: bytes | None) -> Entry:
    try:
        return Entry(partition, offset, decode(DeadLetter, value))
    except InvalidMessage as e:
        return Entry(partition, offset, None, e.reason)


def _matches(e: Entry, f: Filters) -> bool:
    if e.letter is None:  # unreadable entries are always shown: an operator must see them
        return f.code is None and f.service is None
    d = e.letter
    return (
        (f.code is None or d.code == f.code)
        and (f.service is None or d.service == f.service)
        and (f.since is None or d.failed_at >= f.since)
    )


def redriven(stack: StackSettings, entries: list[Entry]) -> set[tuple[str, int, int]]:
    """The source records of ``entries`` that were redriven before."""
    keys = [(e.letter.topic, e.letter.partition, e.letter.offset) for e in entries if e.letter]
    if not keys:
        return set()
    with transaction(stack.pg) as cur:
        cur.execute(
            "SELECT source_topic, source_partition, source_offset FROM dlq_redrives"
            " WHERE (source_topic, source_partition, source_offset) IN"
            " (SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[]))",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
        )
        return {(t, int(p), int(o)) for t, p, o in cur.fetchall()}


@dataclass
class RedriveReport:
    matched: int = 0
    redriven: int = 0
    already: int = 0
    truncated: int = 0
    unreadable: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return dict(self.__dict__)


def redrive(stack: StackSettings, topic: str, filters: Filters, dry_run: bool = False) -> RedriveReport:
    """Publish the matching dead letters' records on their source topics again (see the module docstring)."""
    entries = list(read(stack, topic, filters))
    done = redriven(stack, entries)
    report = RedriveReport(matched=len(entries), dry_run=dry_run)
    todo = []
    for e in entries:
        if e.letter is None:
            report.unreadable += 1
        elif (e.letter.topic, e.letter.partition, e.letter.offset) in done:
            report.already += 1
        elif e.truncated:
            report.truncated += 1
        else:
            todo.append(e)
    if todo and not dry_run:
        _send(stack, topic, todo)
    report.redriven = len(todo)  # with --dry-run: how many would be
    return report


def _send(stack: StackSettings, topic: str, todo: list[Entry]) -> None:
    producer = make_producer(stack.kafka)
    try:
        with transaction(stack.pg) as cur:
            rows = [
                (d.topic, d.partition, d.offset, dlq_topic(topic), e.partition, e.offset, d.code)
                for e in todo
                if (d := e.letter) is not None
            ]
            # ON CONFLICT: a redrive running at the same time got there first; its sends stand.
            execute_values(
                cur,
                "INSERT INTO dlq_redrives (source_topic, source_partition, source_offset, dlq_topic,"
                " dlq_partition, dlq_offset, code) VALUES %s ON CONFLICT DO NOTHING",
                rows,
            )
            futures = []
            for e in todo:
                d = e.letter
                assert d is not None
                key = base64.b64decode(d.key_b64) if d.key_b64 is not None else None
                futures.append(producer.send(d.topic, key=key, value=d.payload()))
            producer.flush(timeout=60)
            for f in futures:
                f.get(timeout=60)  # a refused send raises here: the transaction rolls back, nothing recorded
    finally:
        producer.close()


def describe(e: Entry) -> dict[str, object]:
    """What ``dlq show`` prints: the dead letter with its payload as text when it is text."""
    if e.letter is None:
        return {"dlq_partition": e.partition, "dlq_offset": e.offset, "unreadable": e.problem}
    d = e.letter
    payload = d.payload()
    try:
        shown: object = json.loads(payload)
    except ValueError:
        shown = payload[:200].decode("utf-8", "replace")
    out = d.model_dump(mode="json", exclude={"payload_b64"})
    return {"dlq_partition": e.partition, "dlq_offset": e.offset, **out, "payload": shown}


# -- command line ---------------------------------------------------------------------------------------


def add_dlq_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dlq", help="list, show and redrive dead letters (the runbook after a bad deploy)")
    ds = p.add_subparsers(dest="dlq_command", required=True)
    for name, text in (
        ("list", "dead letters, oldest first"),
        ("redrive", "publish them on their source again"),
    ):
        c = ds.add_parser(name, help=text)
        c.add_argument("--topic", default=IMAGES_SUBMITTED, help="source topic whose .dlq to read")
        c.add_argument("--code", help="only this reason code (e.g. undecodable, unexpected_AttributeError)")
        c.add_argument("--service", help="only dead letters written by this service (scorer, explainer, ...)")
        c.add_argument("--since", help="only those that failed within this long (30m, 2h, 1d)")
        if name == "list":
            c.add_argument("--limit", type=int, default=50)
        else:
            c.add_argument("--dry-run", action="store_true", help="say what would be redriven; send nothing")
    show = ds.add_parser("show", help="one dead letter with its payload")
    show.add_argument("where", help="PARTITION:OFFSET in the .dlq topic (as `dlq list` prints it)")
    show.add_argument("--topic", default=IMAGES_SUBMITTED)


def run_dlq_command(args: argparse.Namespace, stack: StackSettings) -> int:
    logging.getLogger("kafka").setLevel(logging.WARNING)  # connection chatter would bury the table
    if args.dlq_command == "show":
        part, _, off = args.where.partition(":")
        if not (part.isdigit() and off.isdigit()):
            raise SystemExit(f"dlq show: {args.where!r} is not PARTITION:OFFSET")
        found = [e for e in read(stack, args.topic) if (e.partition, e.offset) == (int(part), int(off))]
        if not found:
            raise SystemExit(f"dlq show: no record at {args.where} in {dlq_topic(args.topic)}")
        print(json.dumps(describe(found[0]), indent=2, default=str))
        return 0
    try:
        filters = Filters(args.code, args.service, parse_since(args.since) if args.since else None)
    except ValueError as err:
        raise SystemExit(f"dlq: {err}") from None
    if args.dlq_command == "redrive":
        print(json.dumps(redrive(stack, args.topic, filters, args.dry_run).as_dict()))
        return 0
    entries = list(read(stack, args.topic, filters))
    done = redriven(stack, entries)
    print(f"{'where':<12} {'source':<34} {'service':<10} {'code':<24} {'failed at':<20} redriven  reason")
    for entry in entries[: args.limit]:
        print(_row(entry, done))
    more = len(entries) - args.limit
    print(f"{len(entries)} dead letters" + (f" ({more} more: raise --limit)" if more > 0 else ""))
    return 0


def _row(e: Entry, done: set[tuple[str, int, int]]) -> str:
    where = f"{e.partition}:{e.offset}"
    d = e.letter
    if d is None:
        return f"{where:<12} unreadable: {e.problem}"
    source = f"{d.topic}[{d.partition}]@{d.offset}"
    again = "yes" if (d.topic, d.partition, d.offset) in done else "no"
    failed = d.failed_at.strftime("%Y-%m-%d %H:%M:%S")
    return f"{where:<12} {source:<34} {d.service:<10} {d.code:<24} {failed:<20} {again:<9} {d.reason[:80]}"
