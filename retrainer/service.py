"""``python -m retrainer run``: the feedback consumer, plus the retrain worker as a child process.

Training takes minutes of CPU; running it in a separate process keeps the consumer's batches (and its
``max_poll_interval_ms``) unaffected, and a crash of either process does not take the other down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from ingest.loop import RunStats
from ingest.metrics import new_registry
from ingest.service import build_service
from ingest.settings import StackSettings, describe
from retrainer.feedback import FeedbackHandler, FeedbackMetrics
from retrainer.settings import RetrainerSettings

logger = logging.getLogger(__name__)


def run_feedback(
    stack: StackSettings,
    settings: RetrainerSettings,
    max_records: int | None = None,
    idle_timeout: float | None = None,
) -> RunStats:
    """Consume ``settings.feedback_topic`` until stopped; rows are committed before offsets."""
    logger.info("retrainer settings: %s", describe(settings))
    registry = new_registry()
    with contextlib.ExitStack() as resources:
        handler = FeedbackHandler(
            stack.pg,
            FeedbackMetrics.create(registry),
            known_topic=settings.known_topic or None,
            min_quality=settings.known_min_quality,
        )
        resources.callback(handler.close)
        service = build_service(
            "retrainer",
            [settings.feedback_topic],
            handler,
            stack,
            settings,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            registry=registry,
        )
        return service.loop.run(max_records=max_records, idle_timeout=idle_timeout)


def spawn_worker(extra_args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Start ``python -m retrainer worker`` with this process's interpreter and environment."""
    cmd = [sys.executable, "-m", "retrainer", "worker", *extra_args]
    logger.info("starting the retrain worker: %s", " ".join(cmd))
    return subprocess.Popen(cmd, env=os.environ.copy())


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM (the worker finishes or abandons its run; nothing half-published), then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning("retrain worker did not stop in %.0fs; killing it", timeout)
        proc.kill()
        proc.wait()
