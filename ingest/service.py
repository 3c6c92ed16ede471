"""Wiring shared by every consumer service's ``main()``: logging, settings, clients, metrics, loop."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from ingest.delivery import Delivery, TopicLimits, broker_limits
from ingest.kafka import RevocationTracker, make_admin, make_consumer, make_producer
from ingest.loop import ConsumerLoop, Handler, LoopConfig
from ingest.metrics import LoopMetrics, new_registry, serve_metrics
from ingest.settings import ServiceSettings, StackSettings, describe

logger = logging.getLogger(__name__)


@dataclass
class Service:
    loop: ConsumerLoop
    registry: CollectorRegistry
    metrics_port: int | None


def loop_config(app: str, settings: ServiceSettings, max_batch: int, max_wait_ms: int) -> LoopConfig:
    """The loop's configuration from a service's settings: every field the two share is carried over."""
    shared = {
        f: getattr(settings, f) for f in LoopConfig.__dataclass_fields__ if f in type(settings).model_fields
    }
    return LoopConfig(**{**shared, "service": app, "max_batch": max_batch, "max_wait_ms": max_wait_ms})


def build_service(
    app: str,
    topics: Sequence[str],
    handler: Handler,
    stack: StackSettings,
    settings: ServiceSettings,
    *,
    max_batch: int | None = None,
    max_wait_ms: int = 200,
    registry: CollectorRegistry | None = None,
) -> Service:
    """Create the clients, the metrics endpoint and the loop for one consumer service."""
    logger.info("%s starting: stack=%s settings=%s", app, describe(stack), describe(settings))
    registry = registry or new_registry()
    metrics = LoopMetrics.create(app, registry)
    port = None
    loops: list[ConsumerLoop] = []  # the loop is built below; /ready asks it once it exists

    def ready() -> tuple[bool, str]:
        return loops[0].readiness() if loops else (False, "starting")

    if settings.metrics_port is not None:
        _server, port = serve_metrics(registry, settings.metrics_host, settings.metrics_port, ready)
    batch = max_batch or stack.kafka.max_poll_records
    revocations = RevocationTracker()
    consumer = make_consumer(stack.kafka, settings.group_id, topics, revocations, max_poll_records=batch)
    producer = make_producer(stack.kafka)
    config = loop_config(app, settings, batch, max_wait_ms)
    delivery = Delivery(
        producer,
        app,
        TopicLimits(broker_limits(lambda: make_admin(stack.kafka))),
        config.flush_timeout_s,
        renew=lambda: make_producer(stack.kafka),
    )
    loops.append(ConsumerLoop(consumer, producer, handler, config, metrics, revocations, delivery))
    return Service(loops[0], registry, port)
