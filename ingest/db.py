"""PostgreSQL connections. Statements elsewhere are always parameterised; writes are upserts."""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.extensions

from ingest.settings import PostgresSettings


def connect(pg: PostgresSettings, **kw: Any) -> psycopg2.extensions.connection:
    """A connection with a bounded connect timeout, so an unreachable database is a fast transient error."""
    return psycopg2.connect(pg.dsn.get_secret_value(), connect_timeout=kw.pop("connect_timeout", 5), **kw)
