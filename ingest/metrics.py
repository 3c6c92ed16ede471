"""Prometheus plumbing: an explicit registry per process and the consumer loop's metrics.

Names follow ``<app>_<what>_<unit>``; labels are bounded (topic, outcome, error class),
never an image or user id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

# prometheus_client's own threaded server and quiet request handler, as its start_http_server uses them.
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

logger = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


Readiness = Callable[[], tuple[bool, str]]


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, ready: Readiness | None = None
) -> tuple[Any, int]:
    """Serve ``/metrics`` for ``registry`` on a daemon thread, plus ``/healthz`` (200 while the process
    serves) and ``/ready`` (200, or 503 with the reason while ``ready()`` says not, e.g. while the circuit
    breaker holds a batch); returns (server, bound port).

    Port 0 asks the OS for a free port, which is what tests and a second process on one host want.
    """
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/ready"):
            ok, why = ready() if (ready is not None and path == "/ready") else (True, "ok")
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [why.encode() + b"\n"]
        return metrics_app(environ, start_response)

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    bound = int(server.server_port)
    logger.info("metrics on http://%s:%d/metrics (also /healthz, /ready)", host, bound)
    return server, bound


@dataclass
class LoopMetrics:
    records: Counter
    dead_letters: Counter
    transient_errors: Counter
    batches: Counter
    batch_size: Histogram
    batch_seconds: Histogram
    lag: Gauge
    circuit_open: Gauge

    @classmethod
    def create(cls, app: str, registry: CollectorRegistry) -> LoopMetrics:
        return cls(
            records=Counter(
                f"{app}_records_total",
                "Records consumed, by outcome",
                ["topic", "outcome"],
                registry=registry,
            ),
            dead_letters=Counter(
                f"{app}_dead_letters_total",
                "Records sent to the dead-letter topic, by reason code",
                ["topic", "reason"],
                registry=registry,
            ),
            transient_errors=Counter(
                f"{app}_transient_errors_total",
                "Batches that failed on an unavailable dependency and were retried",
                ["error_class"],
                registry=registry,
            ),
            batches=Counter(f"{app}_batches_total", "Batches, by outcome", ["outcome"], registry=registry),
            batch_size=Histogram(
                f"{app}_batch_size_records",
                "Records per batch",
                buckets=BATCH_SIZE_BUCKETS,
                registry=registry,
            ),
            batch_seconds=Histogram(
                f"{app}_batch_duration_seconds", "Wall time from poll to commit", registry=registry
            ),
            lag=Gauge(
                f"{app}_consumer_lag_records",
                "High watermark minus position, per assigned partition",
                ["topic", "partition"],
                registry=registry,
            ),
            circuit_open=Gauge(
                f"{app}_circuit_open",
                "1 while the circuit breaker holds a batch that failed wholly on unexpected errors "
                "(nothing dead-lettered or committed; ingest/breaker.py)",
                registry=registry,
            ),
        )
