"""``python -m retrainer worker`` (started by ``run``) and ``retrain-now``: when to retrain, one at a time.

Triggers, checked every ``worker_poll_s``: ``trigger_labels`` feedback rows received since the last run's
label cutoff (``feedback_count``), or ``trigger_interval_s`` since the last run with at least one new row
(``schedule``). ``retrain-now`` runs one at once (``manual``). A PostgreSQL advisory lock held for the whole
run makes every run exclusive across processes. At start the worker reconciles the registry with the topic
(re-announces the champion if a crash came between registering and announcing).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from types import FrameType

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingest.db import connect, transaction
from ingest.fetch import Fetcher
from ingest.metrics import new_registry, serve_metrics
from ingest.settings import StackSettings, describe
from retrainer.feedback import majority_labels
from retrainer.registry import ModelRegistry, Trigger
from retrainer.retrain import Abandoned, RetrainOutcome, retrain_once
from retrainer.settings import RetrainerSettings

logger = logging.getLogger(__name__)

RETRAIN_LOCK_KEY = 0x43494641_5254  # arbitrary constant: one retrain at a time per database


class Busy(Exception):
    """Another process holds the retrain lock."""


@dataclass
class WorkerMetrics:
    retrains: Counter
    train_seconds: Histogram
    champion: Gauge
    labels: Gauge
    ties: Gauge
    agreement: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WorkerMetrics:
        return cls(
            retrains=Counter(
                "retrainer_retrains_total",
                "Retrain runs by outcome (started, published, rejected, failed, abandoned, skipped)",
                ["outcome"],
                registry=registry,
            ),
            train_seconds=Histogram(
                "retrainer_training_seconds",
                "Fine-tuning wall time per run",
                buckets=(10, 30, 60, 120, 300, 600, 1200),
                registry=registry,
            ),
            champion=Gauge(
                "retrainer_champion_info", "1 for the current champion", ["version"], registry=registry
            ),
            labels=Gauge(
                "retrainer_feedback_labels", "Images with a majority training label", registry=registry
            ),
            ties=Gauge("retrainer_feedback_ties", "Images left out on a moderators' tie", registry=registry),
            agreement=Gauge(
                "retrainer_label_agreement_ratio",
                "Share of images labelled by several moderators where all agreed",
                registry=registry,
            ),
        )


@contextlib.contextmanager
def retrain_lock(stack: StackSettings) -> Iterator[None]:
    """Hold the advisory lock for the duration; ``Busy`` when another process holds it."""
    conn = connect(stack.pg)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (RETRAIN_LOCK_KEY,))
            row = cur.fetchone()
            if not row or not row[0]:
                raise Busy("another retrain is running")
            try:
                yield
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (RETRAIN_LOCK_KEY,))
    finally:
        conn.close()


def last_run(stack: StackSettings) -> tuple[datetime | None, datetime | None]:
    """(time of the newest fine-tuned version, the label cutoff it trained up to)."""
    with transaction(stack.pg) as cur:
        cur.execute(
            "SELECT created_at, (data->'feedback'->>'cutoff')::timestamptz FROM models"
            " WHERE trigger IS DISTINCT FROM 'initial' ORDER BY created_at DESC LIMIT 1"
        )
        row = cur.fetchone()
    return (row[0], row[1]) if row else (None, None)


def new_labels_since(stack: StackSettings, cutoff: datetime | None) -> int:
    with transaction(stack.pg) as cur:
        if cutoff is None:
            cur.execute("SELECT count(*) FROM feedback")
        else:
            cur.execute("SELECT count(*) FROM feedback WHERE received_at > %s", (cutoff,))
        row = cur.fetchone()
    return int(row[0]) if row else 0


class RetrainWorker:
    def __init__(
        self,
        stack: StackSettings,
        settings: RetrainerSettings,
        registry: ModelRegistry,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.stack = stack
        self.settings = settings
        self.registry = registry
        self.metrics = metrics or WorkerMetrics.create(new_registry())
        self.stop_event = threading.Event()
        self._started = time.time()

    def due(self) -> Trigger | None:
        """The trigger that fires now, if any."""
        at, cutoff = last_run(self.stack)
        n_new = new_labels_since(self.stack, cutoff)
        if n_new == 0:
            return None
        if self.settings.trigger_labels and n_new >= self.settings.trigger_labels:
            return "feedback_count"
        since = time.time() - (at.timestamp() if at else self._started)
        if self.settings.trigger_interval_s and since >= self.settings.trigger_interval_s:
            return "schedule"
        return None

    def run_once(self, trigger: Trigger) -> RetrainOutcome:
        """One retrain under the lock, counted in the metrics; raises ``Busy`` if another one runs."""
        with retrain_lock(self.stack), Fetcher(self.registry.store, self.settings.fetch) as fetcher:
            self.metrics.retrains.labels("started").inc()
            try:
                outcome = retrain_once(
                    self.stack, self.settings, self.registry, fetcher, trigger, self.stop_event
                )
            except Abandoned as e:
                logger.warning("retrain abandoned, nothing published: %s", e)
                self.metrics.retrains.labels("abandoned").inc()
                raise
            except Exception:
                self.metrics.retrains.labels("failed").inc()
                raise
        if outcome.record is None:
            self.metrics.retrains.labels("skipped").inc()
        else:
            self.metrics.retrains.labels("published" if outcome.accepted else "rejected").inc()
            self.metrics.train_seconds.observe(float(outcome.metrics.get("train_seconds", 0.0)))
        self.refresh_gauges()
        return outcome

    def refresh_gauges(self) -> None:
        champion = self.registry.champion()
        self.metrics.champion.clear()
        if champion is not None:
            self.metrics.champion.labels(champion.version).set(1)
        m = majority_labels(self.stack.pg)
        self.metrics.labels.set(len(m.labels))
        self.metrics.ties.set(m.ties)
        if m.agreement is not None:
            self.metrics.agreement.set(m.agreement)

    def run(self, max_runs: int | None = None) -> int:
        """Check the triggers until stopped (or ``max_runs`` runs); returns the number of runs."""
        self.registry.reconcile()
        self.refresh_gauges()
        runs = 0
        while not self.stop_event.is_set() and (max_runs is None or runs < max_runs):
            try:
                trigger = self.due()
                if trigger is not None:
                    logger.info("retrain triggered (%s)", trigger)
                    self.run_once(trigger)
                    runs += 1
            except (Busy, Abandoned) as e:
                logger.info("%s", e)
            except Exception:  # a failed run is logged and counted; the next trigger tries again
                logger.exception("retrain failed")
            self.stop_event.wait(self.settings.worker_poll_s)
        return runs


def run_worker(
    stack: StackSettings, settings: RetrainerSettings, registry: ModelRegistry, max_runs: int | None = None
) -> int:
    """The worker process: metrics endpoint, SIGTERM/SIGINT -> abandon the current run and exit."""
    logger.info("retrain worker settings: %s", describe(settings))
    metrics_registry = new_registry()
    if settings.worker_metrics_port is not None:
        serve_metrics(metrics_registry, settings.metrics_host, settings.worker_metrics_port)
    worker = RetrainWorker(stack, settings, registry, WorkerMetrics.create(metrics_registry))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping the retrain worker", signum)
        worker.stop_event.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    return worker.run(max_runs)
