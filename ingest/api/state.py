"""What every route of the intake API shares: the application state, its PostgreSQL pool, its metrics and
the error body. Its own module so that the routers (``images``, ``review``) and ``app`` do not import each
other."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions
import psycopg2.pool
from fastapi import Request
from fastapi.responses import JSONResponse
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry, Counter, Histogram

from ingest.api.sessions import SessionSigner
from ingest.intake import Intake, IntakeSettings
from ingest.settings import StackSettings
from ingest.storage import S3Store


class Pool:
    """A bounded PostgreSQL pool: ``with pool.connection() as conn`` commits on success, rolls back on error,
    and drops a connection that failed at the connection level. Callers wait for a free connection."""

    def __init__(self, dsn: str, size: int) -> None:
        self._pool = psycopg2.pool.ThreadedConnectionPool(0, size, dsn, connect_timeout=5)
        self._slots = threading.BoundedSemaphore(size)

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        with self._slots:
            conn = self._pool.getconn()
            broken = False
            try:
                yield conn
                conn.commit()
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                broken = True
                raise
            except BaseException:
                conn.rollback()
                raise
            finally:
                self._pool.putconn(conn, close=broken or bool(conn.closed))

    def close(self) -> None:
        self._pool.closeall()


@dataclass
class HttpMetrics:
    requests: Counter
    duration: Histogram
    images: Counter
    feedback: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> HttpMetrics:
        return cls(
            requests=Counter(
                "intake_http_requests_total",
                "HTTP requests",
                ["route", "method", "status"],
                registry=registry,
            ),
            duration=Histogram(
                "intake_http_request_duration_seconds", "HTTP request latency", ["route"], registry=registry
            ),
            images=Counter(
                "intake_images_total",
                "Images handed to the intake, by outcome",
                ["outcome"],
                registry=registry,
            ),
            feedback=Counter(
                "intake_feedback_total", "Moderator labels recorded, by label", ["label"], registry=registry
            ),
        )


@dataclass
class AppState:
    stack: StackSettings
    settings: IntakeSettings
    store: S3Store
    producer: KafkaProducer
    pool: Pool
    intake: Intake
    signer: SessionSigner
    registry: CollectorRegistry
    metrics: HttpMetrics


def state(request: Request) -> AppState:
    st: AppState = request.app.state.cifake
    return st


def error_body(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status)
