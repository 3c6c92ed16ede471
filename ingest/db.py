"""PostgreSQL access: the one way every sink, the registry, the API and the commands reach the database.

* ``Database``: a bounded pool (psycopg2's ``ThreadedConnectionPool``). Long-lived components keep one:
  a consumer's sink at size 1 reuses its connection between batches, the HTTP API sizes it to its
  threads.
* ``transaction(pg)``: one transaction on a connection opened for it, for commands that run a few statements.

Both commit when the block ends, roll back when it raises, drop a connection that failed at the connection
level, and turn connection-level failures into ``TransientError`` so that the consumer loop retries and the
API answers 503. Statements elsewhere are always parameterised; writes are upserts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, TypeAlias

import psycopg2
import psycopg2.extensions
import psycopg2.pool

from ingest.errors import TransientError
from ingest.settings import PostgresSettings

Connection: TypeAlias = psycopg2.extensions.connection
Cursor: TypeAlias = psycopg2.extensions.cursor
CONNECT_TIMEOUT_S = 5  # an unreachable database is a fast transient error, not a hung batch


def connect(pg: PostgresSettings, **kw: Any) -> Connection:
    """A bare connection the caller closes: for session state that outlives a transaction (advisory locks),
    and for tests and tools. Everything else uses ``Database`` or ``transaction``."""
    return psycopg2.connect(pg.dsn.get_secret_value(), connect_timeout=CONNECT_TIMEOUT_S, **kw)


class Database:
    """A pool of at most ``size`` connections, opened on first use; callers beyond ``size`` wait. ``close``
    closes them; a later use opens new ones (a sink closed by one run of its loop can serve the next)."""

    def __init__(self, pg: PostgresSettings, size: int = 1) -> None:
        self._dsn = pg.dsn.get_secret_value()
        self._size = size
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None

    def _current(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._lock:
            if self._pool is None:
                # minconn = maxconn: psycopg2 closes a returned connection while it holds minconn idle
                # ones, so a smaller minconn would reconnect on every use. It opens them all here.
                self._pool = psycopg2.pool.ThreadedConnectionPool(
                    self._size, self._size, self._dsn, connect_timeout=CONNECT_TIMEOUT_S
                )
            return self._pool

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """A connection inside one transaction."""
        with self._slots:
            try:
                pool = self._current()
                conn = pool.getconn()
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
                raise _unavailable(e) from e
            broken = False
            try:
                yield conn
                conn.commit()
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
                broken = True
                raise _unavailable(e) from e
            except BaseException:
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
                raise
            finally:
                with contextlib.suppress(psycopg2.pool.PoolError):  # closed meanwhile: conn is closed too
                    pool.putconn(conn, close=broken or bool(conn.closed))

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Cursor]:
        """A cursor inside one transaction."""
        with self.connection() as conn, conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.closeall()


@contextlib.contextmanager
def transaction(pg: PostgresSettings) -> Iterator[Cursor]:
    """A cursor inside one transaction on a connection that is closed afterwards."""
    db = Database(pg)
    try:
        with db.cursor() as cur:
            yield cur
    finally:
        db.close()


def _unavailable(e: psycopg2.Error) -> TransientError:
    # The server's message names the cause (refused, timeout, terminated); keep it for logs and /ready.
    return TransientError(f"PostgreSQL unavailable: {str(e).strip() or type(e).__name__}")
