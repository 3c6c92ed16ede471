"""Prometheus plumbing: an explicit registry per process and the consumer loop's metrics.

Names follow ``<app>_<what>_<unit>``; labels are bounded (topic, outcome, error class),
never an image or user id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[Any, int]:
    """Serve ``/metrics`` for ``registry`` on a daemon thread; returns (server, bound port).

    Port 0 asks the OS for a free port, which is what tests and a second process on one host want.
    """
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_port)
    logger.info("metrics on http://%s:%d/metrics", host, bound)
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
