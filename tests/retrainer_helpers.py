"""Retrainer integration-test helpers: an isolated PostgreSQL schema, a one-partition models topic."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from psycopg2 import sql
from pydantic import SecretStr

from deploy.provision import apply_migrations, discover_migrations
from ingest.settings import PostgresSettings, StackSettings
from tests.kafka_helpers import create_topics, delete_topics


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` with ``search_path`` set to ``schema``: unqualified table names resolve there first."""
    sep = "&" if "?" in dsn else "?"
    return dsn + sep + "options=" + urllib.parse.quote(f"-c search_path={schema}")


@contextmanager
def isolated_schema(stack: StackSettings) -> Iterator[StackSettings]:
    """A fresh schema with every migration applied; the returned settings point at it. Dropped afterwards.

    The registry has one champion per database (a unique index), so registry tests must not share the real
    ``models`` table with `deploy/stack up`'s champion.
    """
    schema = f"test_{uuid.uuid4().hex[:12]}"
    base = stack.pg.dsn.get_secret_value()
    conn = psycopg2.connect(base)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    finally:
        conn.close()
    dsn = with_search_path(base, schema)
    apply_migrations(dsn, discover_migrations())
    try:
        yield stack.model_copy(update={"pg": PostgresSettings(dsn=SecretStr(dsn))})
    finally:
        conn = psycopg2.connect(base)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        finally:
            conn.close()


@contextmanager
def models_topic(stack: StackSettings) -> Iterator[str]:
    """A one-partition announcement topic for one test (never the real models.published)."""
    name = f"test.models.{uuid.uuid4().hex[:8]}"
    create_topics(stack, {name: 1})
    try:
        yield name
    finally:
        delete_topics(stack, [name])


def insert_images(stack: StackSettings, ids: list[str], refs: list[str] | None = None) -> None:
    """``images`` rows (the feedback consumer only accepts labels for images it knows)."""
    conn = psycopg2.connect(stack.pg.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            for i, image_id in enumerate(ids):
                cur.execute(
                    "INSERT INTO images (id, ref, source, submitted_at) VALUES (%s, %s, 'test', now())"
                    " ON CONFLICT (id) DO NOTHING",
                    (image_id, refs[i] if refs else None),
                )
    finally:
        conn.close()
