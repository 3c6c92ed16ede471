"""Idempotent provisioning of the stack `deploy/stack up` starts: Kafka topics, MinIO buckets, SQL schema.

    python -m deploy.provision [--env-file PATH] [--partitions N] [--replication N]

Connection settings come from the stack's env file (`$CIFAKE_STACK_DIR/env`, default `.stack/env`); the
process environment only fills keys the file lacks. Running it again changes nothing: existing topics and
buckets are kept (a topic with fewer partitions than asked is grown; partitions are never removed), and each
migration in `deploy/migrations/NNNN_name.sql` is applied once, in its own transaction, and recorded in
`schema_migrations`.

Topics are replicated on min(3, brokers) nodes (``--replication`` overrides; `deploy/stack` passes its node
count's value) with ``min.insync.replicas`` 2 at replication 3 and 1 below, so that with three brokers an
``acks=all`` write survives the loss of any one of them and writes go on while one is down. An existing
topic's ``min.insync.replicas`` is brought to that value; its replication factor is never changed.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError
from minio import Minio
from psycopg2 import sql

from ingest.topics import ALL_TOPICS, KNOWN_CONTENT_UPDATES, MODELS_PUBLISHED, dlq_topic

logger = logging.getLogger(__name__)

# Registry announcements and known-content updates must stay totally ordered (a later state of an entry must
# never be overtaken by an earlier one), so those topics (and their DLQs) have exactly one partition.
SINGLE_PARTITION_TOPICS: frozenset[str] = frozenset({MODELS_PUBLISHED, KNOWN_CONTENT_UPDATES})
BUCKETS: tuple[str, ...] = ("images", "explanations", "models")
DEFAULT_PARTITIONS = 6
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Arbitrary constant: serializes concurrent provisioners on one database.
MIGRATION_LOCK_KEY = 0x43494641_4B45


@dataclass(frozen=True)
class StackEnv:
    """The connection settings `deploy/stack` writes into its env file."""

    bootstrap_servers: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_secure: bool
    pg_dsn: str

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> StackEnv:
        def get(key: str) -> str:
            try:
                return values[key]
            except KeyError:
                raise SystemExit(f"provision: {key} is not set (run deploy/stack up first)") from None

        return cls(
            bootstrap_servers=get("CIFAKE_KAFKA__BOOTSTRAP_SERVERS"),
            s3_endpoint=get("CIFAKE_S3__ENDPOINT"),
            s3_access_key=get("CIFAKE_S3__ACCESS_KEY"),
            s3_secret_key=get("CIFAKE_S3__SECRET_KEY"),
            s3_secure=get("CIFAKE_S3__SECURE").strip().lower() in {"1", "true", "yes", "on"},
            pg_dsn=get("CIFAKE_PG__DSN"),
        )


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; skips blank lines and `#` comments; quotes are not interpreted."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}:{number}: expected KEY=VALUE")
        values[key.strip()] = value.strip()
    return values


def default_env_file() -> Path:
    stack_dir = os.environ.get("CIFAKE_STACK_DIR")
    if stack_dir:
        return Path(stack_dir) / "env"
    return Path(__file__).resolve().parent.parent / ".stack" / "env"


def load_stack_env(env_file: Path) -> StackEnv:
    """The env file's values; the process environment only fills keys the file lacks.

    The file wins so that provisioning a second stack (its own state dir) can never be redirected to the main
    stack by CIFAKE_* variables a caller happens to export.
    """
    values = {k: v for k, v in os.environ.items() if k.startswith("CIFAKE_")}
    if env_file.exists():
        values.update(read_env_file(env_file))
    return StackEnv.from_mapping(values)


# ----------------------------------------------------------------------------------------------------
# Kafka


def topic_plan(partitions: int) -> dict[str, int]:
    """Topic name -> partition count: every topic plus its dead-letter topic."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    plan: dict[str, int] = {}
    for topic in ALL_TOPICS:
        count = 1 if topic in SINGLE_PARTITION_TOPICS else partitions
        plan[topic] = count
        plan[dlq_topic(topic)] = count
    return plan


def min_insync_replicas(replication: int) -> int:
    """Acknowledged writes need this many replicas: a majority of 3 (any one broker may be lost), else 1."""
    return replication - 1 if replication >= 3 else 1


def ensure_topics(admin: Any, plan: Mapping[str, int], replication: int | None = None) -> list[str]:
    """Create missing topics and grow short ones; returns one line per change.

    ``replication`` defaults to min(3, brokers in the cluster now).
    """
    if replication is None:
        replication = min(3, len(admin.describe_cluster()["brokers"]))
    if replication < 1:
        raise ValueError(f"replication must be >= 1, got {replication}")
    min_isr = str(min_insync_replicas(replication))
    described = [t for t in admin.describe_topics() if t.get("error_code", 0) == 0]
    existing = {t["name"]: len(t["partitions"]) for t in described}
    changes: list[str] = []
    missing = {name: count for name, count in plan.items() if name not in existing}
    if missing:
        request = {
            name: {
                "num_partitions": count,
                "replication_factor": replication,
                "configs": {"min.insync.replicas": min_isr},
            }
            for name, count in missing.items()
        }
        try:
            admin.create_topics(request)
        except TopicAlreadyExistsError:
            logger.info("another provisioner created some topics concurrently")
        changes += [
            f"created topic {name} ({count} partitions, replicas {replication}, min.insync {min_isr})"
            for name, count in missing.items()
        ]
    changes += _ensure_min_isr(admin, [name for name in plan if name in existing], min_isr)
    for t in described:
        replicas = min((len(p["replica_nodes"]) for p in t["partitions"]), default=replication)
        if t["name"] in plan and replicas < replication:
            logger.warning(
                "topic %s has %d replicas, fewer than the %d asked; left as is (reset the stack for more)",
                t["name"],
                replicas,
                replication,
            )
    grow = {name: count for name, count in plan.items() if name in existing and existing[name] < count}
    if grow:
        admin.create_partitions(grow)
        changes += [
            f"grew topic {name} {existing[name]} -> {count} partitions" for name, count in grow.items()
        ]
    for name, count in plan.items():
        if existing.get(name, count) > count:
            logger.warning(
                "topic %s has %d partitions, more than the %d asked; left as is", name, existing[name], count
            )
    admin.wait_for_topics(list(plan), timeout_ms=30_000)
    return changes


def _ensure_min_isr(admin: Any, topics: list[str], min_isr: str) -> list[str]:
    """Set ``min.insync.replicas`` on existing topics whose value differs (the broker default included)."""
    if not topics:
        return []
    wanted = {"min.insync.replicas": None}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, wanted) for name in topics]
    described = admin.describe_configs(resources, config_filter="all")
    current = {
        name: str((entries.get("min.insync.replicas") or {}).get("value"))
        for name, entries in described.get("topic", {}).items()
    }
    stale = [name for name in topics if current.get(name) != min_isr]
    if not stale:
        return []
    admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, {"min.insync.replicas": min_isr}) for name in stale]
    )
    return [f"set min.insync.replicas={min_isr} on topic {name}" for name in stale]


# ----------------------------------------------------------------------------------------------------
# MinIO


def ensure_buckets(client: Minio, buckets: Iterable[str]) -> list[str]:
    changes: list[str] = []
    for bucket in buckets:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
            changes.append(f"created bucket {bucket}")
    return changes


# ----------------------------------------------------------------------------------------------------
# PostgreSQL


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migrations in version order; a misnamed .sql file or a repeated version is an error, not a skip."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"{path}: migration files are named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"{path}: version {version} already used by {found[version].path.name}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


def ensure_database(dsn: str) -> list[str]:
    """Create the DSN's database if missing, connecting to the cluster's `postgres` database to do it."""
    params = psycopg2.extensions.parse_dsn(dsn)
    dbname = params.get("dbname", "")
    conn = psycopg2.connect(**{**params, "dbname": "postgres"})
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone():
                return []
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            return [f"created database {dbname}"]
    finally:
        conn.close()


def apply_migrations(dsn: str, migrations: Iterable[Migration]) -> list[str]:
    """Apply each unrecorded migration in its own transaction; a changed, applied one is an error."""
    changes: list[str] = []
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
            cur.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version     integer PRIMARY KEY,
                    name        text NOT NULL,
                    checksum    text NOT NULL,
                    applied_at  timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            conn.commit()
            cur.execute("SELECT version, checksum FROM schema_migrations")
            applied: dict[int, str] = dict(cur.fetchall())
            conn.commit()
            for migration in migrations:
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise SystemExit(
                            f"provision: migration {migration.path.name} changed after it was applied; "
                            "add a new migration instead (or `deploy/stack reset` a development stack)"
                        )
                    continue
                cur.execute(migration.text)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
                conn.commit()
                changes.append(f"applied migration {migration.path.name}")
            cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()
    return changes


# ----------------------------------------------------------------------------------------------------


def provision(env: StackEnv, partitions: int, replication: int | None = None) -> list[str]:
    """Bring topics, buckets and schema to the declared state; returns what changed (empty if nothing)."""
    changes: list[str] = []
    admin = KafkaAdminClient(bootstrap_servers=env.bootstrap_servers.split(","), client_id="cifake-provision")
    try:
        changes += ensure_topics(admin, topic_plan(partitions), replication)
    finally:
        admin.close()
    s3 = Minio(
        env.s3_endpoint, access_key=env.s3_access_key, secret_key=env.s3_secret_key, secure=env.s3_secure
    )
    changes += ensure_buckets(s3, BUCKETS)
    changes += ensure_database(env.pg_dsn)
    changes += apply_migrations(env.pg_dsn, discover_migrations())
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.provision", description="Provision the dev stack."
    )
    parser.add_argument(
        "--env-file", type=Path, default=None, help="default: $CIFAKE_STACK_DIR/env or .stack/env"
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=int(os.environ.get("CIFAKE_PARTITIONS", DEFAULT_PARTITIONS)),
        help=f"partitions per topic (default: $CIFAKE_PARTITIONS or {DEFAULT_PARTITIONS}); "
        "models.published always has 1",
    )
    parser.add_argument(
        "--replication",
        type=int,
        default=None,
        help="replicas per topic partition (default: min(3, brokers in the cluster))",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="provision: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    env = load_stack_env(args.env_file or default_env_file())
    changes = provision(env, args.partitions, args.replication)
    for change in changes:
        logger.info("%s", change)
    logger.info(
        "%d topics, %d buckets, schema at migration %d: %s",
        len(topic_plan(args.partitions)),
        len(BUCKETS),
        max((m.version for m in discover_migrations()), default=0),
        f"{len(changes)} change(s)" if changes else "already up to date",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
