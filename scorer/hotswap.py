"""Hot model swap: follow ``models.published`` and hand verified new models to the scoring loop.

A background thread reads the single-partition ``models.published`` topic (no consumer group: every
scorer must see every announcement). For each announcement it downloads the weights from the object
store, checks their sha256 against the message, loads them, and parks the result; the scorer picks it up
with ``take()`` between two batches. Anything wrong with an announcement (unparseable, unknown object,
wrong hash, weights that do not load) is logged and counted and the current model keeps serving.

On start the watcher replays the latest announcement, so a scorer (re)started after a promotion or a
rollback serves the current champion rather than whatever its configuration names.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter

from ingest.contracts import ModelPublished, decode, parse_s3_ref
from ingest.errors import InvalidMessage, PermanentError, is_transient
from ingest.settings import KafkaSettings
from ingest.storage import ObjectStore
from ingest.topics import MODELS_PUBLISHED
from scorer.engine import ServingModel
from scorer.follower import TopicFollower

logger = logging.getLogger(__name__)

MAX_WEIGHTS_BYTES = 200 * 1024 * 1024
MODELS_BUCKET = "models"


class ModelWatcher(TopicFollower):
    name = "model-watcher"

    def __init__(
        self,
        kafka: KafkaSettings,
        store: ObjectStore,
        device: str,
        registry: CollectorRegistry,
        app: str = "scorer",
        topic: str = MODELS_PUBLISHED,
        replay_last: bool = True,
        current_version: Callable[[], str] | None = None,
        runtime: str = "auto",
    ) -> None:
        self.kafka = kafka
        self.runtime = runtime
        self.topic = topic
        self.store = store
        self.device = device
        self.replay_last = replay_last
        self.current_version = current_version or (lambda: "")
        self.swaps = Counter(
            f"{app}_model_updates_total",
            "Model announcements handled, by outcome",
            ["outcome"],
            registry=registry,
        )
        self._pending: ServingModel | None = None
        self._lock = threading.Lock()
        self._end_at_start = 0
        super().__init__()

    # -- scorer side (wait_ready: caught up with the announcements that existed at start) ---------

    def take(self) -> ServingModel | None:
        """The newest verified model not yet handed out, or None."""
        with self._lock:
            model, self._pending = self._pending, None
        return model

    # -- watcher thread -----------------------------------------------------------------------

    def _on_records(self, consumer: KafkaConsumer, records: Sequence[ConsumerRecord]) -> None:
        for m in records:
            self._handle(m.value, f"{self.topic}@{m.offset}")
        if not self._ready.is_set() and self._caught_up(consumer):
            self._ready.set()

    def _open(self) -> KafkaConsumer:
        consumer = KafkaConsumer(**self.kafka.client_kwargs(), enable_auto_commit=False)
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        consumer.seek(tp, max(0, end - 1) if self.replay_last else end)
        self._end_at_start = end
        return consumer

    def _caught_up(self, consumer: KafkaConsumer) -> bool:
        return bool(consumer.position(TopicPartition(self.topic, 0)) >= self._end_at_start)

    def _handle(self, value: bytes | None, where: str) -> None:
        try:
            msg = decode(ModelPublished, value)
        except InvalidMessage as e:
            logger.error("ignoring model announcement %s: %s", where, e.reason)
            self.swaps.labels("invalid_message").inc()
            return
        if msg.version == self.current_version():
            self.swaps.labels("already_serving").inc()
            return
        while not self._stop.is_set():
            try:
                model = self._fetch_and_load(msg)
            except PermanentError as e:
                logger.error("model %s not loaded, current model keeps serving: %s", msg.version, e.reason)
                self.swaps.labels(e.code if hasattr(e, "code") else "rejected").inc()
                return
            except Exception as e:
                if is_transient(e):
                    logger.warning("model %s: store unavailable (%s); retrying", msg.version, e)
                    self._stop.wait(2.0)
                    continue
                logger.error(
                    "model %s not loaded, current model keeps serving: %s: %s",
                    msg.version,
                    type(e).__name__,
                    e,
                )
                self.swaps.labels("unloadable").inc()
                return
            with self._lock:
                self._pending = model
            self.swaps.labels("loaded").inc()
            logger.info("model %s verified and ready to serve", msg.version)
            return

    def _fetch_and_load(self, msg: ModelPublished) -> ServingModel:
        return fetch_verified_model(
            self.store, msg.object_key, msg.sha256, msg.version, self.device, runtime=self.runtime
        )


def fetch_verified_model(
    store: ObjectStore,
    object_key: str,
    sha256: str,
    version: str,
    device: str | torch.device,
    code_prefix: str = "",
    runtime: str = "auto",
) -> ServingModel:
    """Download weights (a key in bucket ``models`` or an s3:// ref), check their sha256, load them.

    A wrong hash or unloadable file is a ``PermanentError`` coded ``<code_prefix>sha256_mismatch`` /
    ``<code_prefix>unloadable``; store errors propagate unchanged for the caller to classify.
    """
    bucket, key = MODELS_BUCKET, object_key
    if key.startswith("s3://"):
        bucket, key = parse_s3_ref(key)
    data = store.get(bucket, key, max_bytes=MAX_WEIGHTS_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise PermanentError(
            f"sha256 of s3://{bucket}/{key} is {digest[:12]}..., expected {sha256[:12]}...",
            code=code_prefix + "sha256_mismatch",
        )
    with tempfile.TemporaryDirectory(prefix="cifake-model-") as tmp:
        path = Path(tmp) / "weights.safetensors"
        path.write_bytes(data)
        try:
            return ServingModel.load(path, device, version=version, runtime=runtime)
        except Exception as e:  # a corrupt or foreign file: safetensors/metadata/shape errors
            raise PermanentError(
                f"weights do not load: {type(e).__name__}: {e}", code=code_prefix + "unloadable"
            ) from e
