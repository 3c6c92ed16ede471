"""A background thread that follows one single-partition topic without a consumer group.

Every scorer must see every record of such a topic (model announcements, known-content updates), so
there is no group and no committed offset: a subclass says where to start (``_open``) and what a polled
batch does (``_on_records``). The thread never dies: any error closes the consumer, waits and reopens,
so a broker restart costs a reconnect, not a scorer that silently stopped following.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord

logger = logging.getLogger(__name__)


class TopicFollower:
    name = "follower"
    poll_ms = 500
    retry_s = 2.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the subclass has set ``_ready`` (caught up with what existed at start)."""
        return self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _open(self) -> KafkaConsumer:
        raise NotImplementedError

    def _on_records(self, consumer: KafkaConsumer, records: Sequence[ConsumerRecord]) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._open()
                polled = consumer.poll(timeout_ms=self.poll_ms)
                self._on_records(consumer, [m for msgs in polled.values() for m in msgs])
            except Exception as e:  # never let the thread die (see the module docstring)
                logger.warning("%s: %s: %s; reconnecting", self.name, type(e).__name__, e)
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._stop.wait(self.retry_s)
        if consumer is not None:
            consumer.close()
