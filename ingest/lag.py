"""Consumer lag per assigned partition, as the loop reports it after each committed batch."""

from __future__ import annotations

import contextlib

from prometheus_client import Gauge

from ingest.loop_config import ConsumerLike


class LagReporter:
    """Sets ``<app>_consumer_lag_records{topic,partition}`` for the partitions this member owns."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._reported: set[tuple[str, str]] = set()  # (topic, partition) labels this member has set

    def update(self, consumer: ConsumerLike) -> None:
        assigned = consumer.assignment()
        # After a rebalance, drop partitions this member no longer owns: their new owner reports them, and a
        # stale value here would keep a lag alert firing (or hide one) forever.
        for topic, partition in self._reported - {(tp.topic, str(tp.partition)) for tp in assigned}:
            with contextlib.suppress(KeyError):
                self.gauge.remove(topic, partition)
            self._reported.discard((topic, partition))
        for tp in assigned:
            try:
                high = consumer.highwater(tp)
                pos = consumer.position(tp, timeout_ms=1000)
            except Exception:  # lag is best-effort telemetry; never fail a batch over it
                continue
            if high is not None and pos is not None:
                self.gauge.labels(tp.topic, str(tp.partition)).set(max(0, high - pos))
                self._reported.add((tp.topic, str(tp.partition)))
