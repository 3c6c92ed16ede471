"""``ingest.db``, the one way components reach PostgreSQL, against the real database (own schema per test)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from harness.wait import wait_until
from ingest.db import Database, transaction
from ingest.errors import TransientError, classify
from ingest.settings import PostgresSettings, StackSettings


@pytest.fixture
def db(iso: StackSettings) -> Iterator[Database]:
    with transaction(iso.pg) as cur:
        cur.execute("CREATE TABLE t (n int PRIMARY KEY)")
    database = Database(iso.pg)
    yield database
    database.close()


def _rows(pg: PostgresSettings) -> list[int]:
    with transaction(pg) as cur:
        cur.execute("SELECT n FROM t ORDER BY n")
        return [int(r[0]) for r in cur.fetchall()]


def test_a_block_commits_when_it_ends_and_rolls_back_when_it_raises(db: Database, iso: StackSettings) -> None:
    with db.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError), db.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("the caller's own failure")
    assert _rows(iso.pg) == [1]
    with db.cursor() as cur:  # the rolled-back connection is usable again
        cur.execute("INSERT INTO t VALUES (3)")
    assert _rows(iso.pg) == [1, 3]


def test_a_killed_connection_is_transient_and_replaced(db: Database, iso: StackSettings) -> None:
    with db.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        first_pid = cur.fetchone()[0]
    with transaction(iso.pg) as cur:  # what a failover or an operator's pg_terminate_backend does
        cur.execute("SELECT pg_terminate_backend(%s, 5000)", (first_pid,))  # waits until it has exited
    with pytest.raises(TransientError, match="PostgreSQL unavailable") as caught, db.cursor() as cur:
        cur.execute("SELECT 1")
    assert classify(caught.value) == "transient"
    with db.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        assert cur.fetchone()[0] != first_pid


def test_an_unreachable_server_is_a_transient_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg = PostgresSettings(dsn=SecretStr(f"postgresql://nobody@127.0.0.1:{port}/none"))
    with pytest.raises(TransientError, match="PostgreSQL unavailable"), transaction(pg) as cur:
        cur.execute("SELECT 1")


def test_a_closed_database_opens_a_new_connection_on_next_use(db: Database, iso: StackSettings) -> None:
    with db.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    db.close()
    with db.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (2)")
    assert _rows(iso.pg) == [1, 2]


def test_callers_beyond_the_pool_size_wait_for_a_free_connection(iso: StackSettings) -> None:
    database = Database(iso.pg, size=2)
    inside, peak, done, lock = 0, 0, 0, threading.Lock()
    release, overflow = threading.Event(), threading.Event()

    def use() -> None:
        nonlocal inside, peak, done
        with database.cursor() as cur:
            with lock:
                inside += 1
                peak = max(peak, inside)
                if inside > 2:
                    overflow.set()
            cur.execute("SELECT 1")
            release.wait(5)
            with lock:
                inside -= 1
                done += 1

    threads = [threading.Thread(target=use) for _ in range(5)]
    for t in threads:
        t.start()
    wait_until(lambda: inside == 2, 60, "two callers holding a connection")
    # The three others are blocked: were the pool not bounded, one would get in within this wait.
    assert not overflow.wait(0.5)
    assert peak == 2
    release.set()
    for t in threads:
        t.join(10)
    database.close()
    assert (peak, done) == (2, 5)
