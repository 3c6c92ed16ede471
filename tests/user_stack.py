"""The user's own stack (the one `make demo` and the review console use, ``.stack/env``) must come out of
`make test` exactly as it went in: the suite runs against a stack of its own (``.stack-test``).

``fingerprint`` reads everything a moderator or an operator could see there: the content of every table in
PostgreSQL (a hash per table, and the schema names), every object in MinIO (name and ETag), every topic's
end offsets and every consumer group's committed offsets. It only reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from psycopg2 import sql

from ingest.api.sessions import COOKIE, SessionSigner
from ingest.db import transaction
from ingest.kafka import make_admin
from ingest.settings import StackSettings
from ingest.storage import S3Store
from tests.intake_helpers import intake_settings, request, running_intake
from tests.kafka_helpers import kafka_reachable

ROOT = Path(__file__).resolve().parents[1]
# The console is read as a moderator that exists nowhere: a session cookie is signed with the secret of an
# intake started just for the check, so nothing (no account, no login) is written to the user's database.
SESSION_SECRET = secrets.token_hex(32)
CHECKER = "suite-check"
ROWS_DIGEST = "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"


def user_env_file() -> Path:
    return Path(os.environ.get("CIFAKE_USER_ENV_FILE", ROOT / ".stack" / "env"))


def user_stack() -> StackSettings | None:
    """The user's stack when its env file exists and its broker answers, else None."""
    env = user_env_file()
    if not env.is_file() or env.resolve() == Path(os.environ.get("CIFAKE_ENV_FILE", "")).resolve():
        return None  # no user stack, or the suite was pointed at it: nothing to compare
    settings = StackSettings(_env_file=env)  # type: ignore[call-arg]
    return None if kafka_reachable(settings) else settings


@dataclass(frozen=True)
class Fingerprint:
    tables: dict[str, str]  # schema.table -> hash of its rows
    objects: dict[str, str]  # bucket -> hash of (name, etag) of every object, with the count
    topics: dict[str, tuple[int, ...]]  # topic -> end offset per partition
    groups: dict[str, dict[str, int]]  # group -> "topic:partition" -> committed offset

    def differences(self, after: Fingerprint) -> list[str]:
        out = []
        pairs: list[tuple[str, Mapping[str, object], Mapping[str, object]]] = [
            ("table", self.tables, after.tables),
            ("bucket", self.objects, after.objects),
            ("topic", self.topics, after.topics),
            ("consumer group", self.groups, after.groups),
        ]
        for what, a, b in pairs:
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    out.append(f"{what} {name}: {a.get(name)!r} -> {b.get(name)!r}")
        return out


def fingerprint(stack: StackSettings) -> Fingerprint:
    return Fingerprint(_tables(stack), _objects(stack), *_kafka(stack))


def _tables(stack: StackSettings) -> dict[str, str]:
    with transaction(stack.pg) as cur:
        cur.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        )
        out = {}
        for schema, table in cur.fetchall():
            cur.execute(sql.SQL(ROWS_DIGEST).format(sql.Identifier(schema, table)))
            n, digest = cur.fetchone()
            out[f"{schema}.{table}"] = f"{n} rows, {digest}"
    return out


def _objects(stack: StackSettings) -> dict[str, str]:
    client = S3Store(stack.s3).client
    out = {}
    for bucket in client.list_buckets():
        h, n = hashlib.sha256(), 0
        for obj in client.list_objects(bucket.name, recursive=True):
            h.update(f"{obj.object_name}\0{obj.etag}\n".encode())
            n += 1
        out[bucket.name] = f"{n} objects, {h.hexdigest()[:16]}"
    return out


def _kafka(stack: StackSettings) -> tuple[dict[str, tuple[int, ...]], dict[str, dict[str, int]]]:
    admin = make_admin(stack.kafka)
    consumer = KafkaConsumer(**stack.kafka.client_kwargs(), enable_auto_commit=False)  # no group: reads only
    try:
        topics: dict[str, tuple[int, ...]] = {}
        for topic in sorted(t for t in admin.list_topics() if not t.startswith("__")):
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = consumer.end_offsets(parts)
            topics[topic] = tuple(ends[p] for p in parts)
        names = sorted(g["group_id"] for g in admin.list_groups())
        offsets = admin.list_group_offsets(names) if names else {}
        groups = {g: _committed(offsets.get(g, {})) for g in names}
        # A group without committed offsets holds no state, and the broker deletes it on its own once it is
        # empty (after its topics were deleted, say): it coming or going is not the suite writing.
        return topics, {g: o for g, o in groups.items() if o}
    finally:
        consumer.close()
        admin.close()


def _committed(offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> dict[str, int]:
    return {f"{tp.topic}:{tp.partition}": meta.offset for tp, meta in offsets.items()}


@dataclass(frozen=True)
class ConsoleView:
    queue: list[str]  # image ids the review queue offers, in order
    models: list[str]  # versions the Models page lists, in order


@dataclass(frozen=True)
class BeforeSuite:
    stack: StackSettings
    fingerprint: Fingerprint
    console: ConsoleView


BEFORE_SUITE = pytest.StashKey[BeforeSuite | None]()


def before_suite() -> BeforeSuite | None:
    stack = user_stack()
    if stack is None:
        return None
    with console(stack) as (base, cookie):
        return BeforeSuite(stack, fingerprint(stack), ConsoleView(*_read_console(base, cookie)))


@contextmanager
def console(stack: StackSettings) -> Iterator[tuple[str, str]]:
    """(base URL, session cookie value) of an intake API serving the user's stack, for this check only."""
    settings = intake_settings(session_secret=SESSION_SECRET)
    signer = SessionSigner(SESSION_SECRET.encode(), settings.session_ttl_s)
    with running_intake(stack, settings) as base:
        yield base, signer.dumps(signer.new(CHECKER))


def queue_ids(hrefs: list[str]) -> list[str]:
    return [h.removeprefix("/review/item/").split("?")[0] for h in hrefs if h.startswith("/review/item/")]


def _read_console(base: str, cookie: str) -> tuple[list[str], list[str]]:
    pages = []
    for path in ("/review", "/review/models"):
        status, body = request("GET", base + path, headers={"Cookie": f"{COOKIE}={cookie}"})
        assert status == 200 and isinstance(body, bytes), f"GET {path} on the user's console: {status}"
        pages.append(body.decode())
    queue = queue_ids(re.findall(r'href="(/review/item/[^"]+)"', pages[0]))
    return queue, re.findall(r'<tr data-version="([^"]+)"', pages[1])
