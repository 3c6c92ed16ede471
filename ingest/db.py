"""PostgreSQL connections. Statements elsewhere are always parameterised; writes are upserts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions

from ingest.settings import PostgresSettings


def connect(pg: PostgresSettings, **kw: Any) -> psycopg2.extensions.connection:
    """A connection with a bounded connect timeout, so an unreachable database is a fast transient error."""
    return psycopg2.connect(pg.dsn.get_secret_value(), connect_timeout=kw.pop("connect_timeout", 5), **kw)


class OneConnection:
    """A connection factory over one reused connection: each ``with`` block is a transaction, committed
    when the block ends and rolled back when it raises. For single-threaded batch tools (the intake's
    ``submit`` command, tests); services that serve requests concurrently use a pool instead."""

    def __init__(self, pg: PostgresSettings) -> None:
        self.conn = connect(pg)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[psycopg2.extensions.connection]:
        try:
            yield self.conn
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise

    def close(self) -> None:
        self.conn.close()
