"""``python -m scorer run``: a consumer-group member that turns image references into verdicts."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Callable

import torch
from prometheus_client import CollectorRegistry
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from ingest import cli
from ingest.decode import DecodeLimits
from ingest.fetch import Fetcher, FetchSettings
from ingest.loop import RunStats
from ingest.metrics import new_registry
from ingest.service import build_service
from ingest.settings import ServiceSettings, StackSettings, describe, load
from ingest.storage import S3Store
from ingest.topics import IMAGES_SUBMITTED, MODELS_PUBLISHED
from scorer.engine import ServingModel, warm_up
from scorer.handler import PersistInline, ScoreHandler, ScorerMetrics
from scorer.hotswap import ModelWatcher
from scorer.infer import pick_device
from scorer.known_index import KnownIndex
from scorer.known_watcher import KnownContentWatcher
from scorer.runtime import Runtime
from scorer.signals import SignalSettings
from scorer.sink import PostgresVerdictSink

logger = logging.getLogger(__name__)


class ScorerSettings(ServiceSettings):
    """``CIFAKE_SCORER_*``; nested groups use ``__`` (e.g. ``CIFAKE_SCORER_FETCH__HTTP_ENABLED=true``)."""

    model_config = SettingsConfigDict(
        env_prefix="CIFAKE_SCORER_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    group_id: str = "scorer"
    input_topic: str = IMAGES_SUBMITTED
    models_topic: str = MODELS_PUBLISHED
    metrics_port: int | None = 9101
    weights: str = "default"
    device: str = "auto"
    # What runs the model: ONNX Runtime on CPU and PyTorch on CUDA by default (scorer/runtime.py).
    runtime: Runtime = "auto"
    threads: int | None = Field(default=None, ge=1)
    max_batch: int = Field(default=256, ge=1, le=4096)
    max_wait_ms: int = Field(default=20, ge=0)
    # Verdicts within this distance of the model's threshold are labelled "uncertain".
    uncertain_band: float = Field(default=0.1, ge=0.0, le=0.5)
    # Inline images (bytes in the message) are stored in the ``images`` bucket for the explainer and the
    # console: ``all``; ``flagged``: only those not labelled real (half the PUTs on even traffic, and
    # a real verdict's image stays with the platform); ``none``. true/false mean all/none.
    persist_inline: PersistInline = "all"
    follow_models: bool = True
    decode_workers: int = Field(default=2, ge=1)
    # The most images per inference call inside a micro-batch: while one chunk is inferred the next ones
    # are fetched and decoded, so smaller chunks overlap more. A small batch is cut into quarters of at
    # least 8 images (scorer/handler.py).
    infer_chunk: int = Field(default=64, ge=1)
    fetch: FetchSettings = FetchSettings()
    limits: DecodeLimits = DecodeLimits()
    signals: SignalSettings = SignalSettings()

    @field_validator("persist_inline", mode="before")
    @classmethod
    def _persist_bool(cls, v: object) -> object:
        """The setting was a boolean before ``flagged`` existed: true/false still work."""
        if isinstance(v, bool):
            return "all" if v else "none"
        if isinstance(v, str) and v.strip().lower() in {"true", "false", "1", "0", "yes", "no"}:
            return "all" if v.strip().lower() in {"true", "1", "yes"} else "none"
        return v


def cpu_threads(configured: int | None, cpus: int | None = None) -> int:
    """Intra-op threads for CPU inference: the configured count, else half of the cores.

    The scorer is not only a model: its fetch threads, its decode pool and, on a small host, the
    object store and the broker need CPU at the same moments. Measured on 2 cores at 170 images/s
    (``python -m harness.pipeline``): 2 threads gave p99 397 ms, 1 thread 130 ms, at the same backlog
    throughput (310 vs 302 images/s): idle OpenMP workers spin and a convolution waits for its slowest thread,
    so a second thread mostly took CPU from the fetches. A host whose cores serve only the scorer
    can set ``CIFAKE_SCORER_THREADS`` to all of them.
    """
    if configured:
        return configured
    return max(1, (cpus or os.cpu_count() or 2) // 2)


def run_scorer(
    stack: StackSettings,
    settings: ScorerSettings,
    max_records: int | None = None,
    idle_timeout: float | None = None,
    known_index: KnownIndex | None = None,
) -> RunStats:
    """Score until a stop condition. ``known_index``: the index to keep the known-content lists in (tests
    pass their own to watch it fill); a new one when None."""
    logger.info("scorer settings: %s", describe(settings))
    store = S3Store(stack.s3)
    if pick_device(settings.device).type == "cpu":
        # Before loading: the ONNX Runtime session takes its thread count from here.
        torch.set_num_threads(cpu_threads(settings.threads))
        logger.info("inference on %d CPU thread(s)", torch.get_num_threads())
    model = ServingModel.load(settings.weights, settings.device, runtime=settings.runtime)
    logger.info("warm-up: %d batch sizes", warm_up(model, settings.max_batch))
    registry = new_registry()
    with contextlib.ExitStack() as resources:
        fetcher = Fetcher(store, settings.fetch)
        resources.callback(fetcher.close)
        sink = PostgresVerdictSink(stack.pg)
        resources.callback(sink.close)
        watcher = None
        if settings.follow_models:
            watcher = ModelWatcher(
                stack.kafka,
                store,
                settings.device,
                registry,
                topic=settings.models_topic,
                current_version=lambda: handler.model.version,
                runtime=settings.runtime,
            )
        handler = ScoreHandler(
            fetcher=fetcher,
            limits=settings.limits,
            sink=sink,
            store=store,
            model=model,
            next_model=watcher.take if watcher is not None else lambda: None,
            uncertain_band=settings.uncertain_band,
            metrics=ScorerMetrics.create(registry),
            persist_inline=settings.persist_inline,
            decode_workers=settings.decode_workers,
            chunk=settings.infer_chunk,
            signals=settings.signals if settings.signals.enabled else None,
            known_index=start_known_content(stack, settings.signals, registry, resources, known_index),
        )
        resources.callback(handler.close)
        service = build_service(
            "scorer",
            [settings.input_topic],
            handler,
            stack,
            settings,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            registry=registry,
        )
        if watcher is not None:
            watcher.start()
            resources.callback(watcher.stop)
        return service.loop.run(max_records=max_records, idle_timeout=idle_timeout)


def start_known_content(
    stack: StackSettings,
    signals: SignalSettings,
    registry: CollectorRegistry,
    resources: contextlib.ExitStack,
    index: KnownIndex | None = None,
) -> KnownIndex | None:
    """The known-content index, loaded from PostgreSQL and following its topic, or None when turned off.

    Waits up to ``ready_timeout_s`` for the first load, so a starting scorer does not score re-uploads of
    labelled images against empty lists; past that it scores anyway (``scorer_known_content_ready`` 0)."""
    if not (signals.enabled and signals.known_content):
        return None
    if index is None:
        index = KnownIndex(max_distance=signals.match_distance)
    watcher = KnownContentWatcher(stack.kafka, stack.pg, index, registry, topic=signals.known_topic)
    watcher.start()
    resources.callback(watcher.stop)
    if not watcher.wait_ready(signals.ready_timeout_s):
        logger.warning(
            "known-content lists not loaded after %.0fs; scoring without them until they are",
            signals.ready_timeout_s,
        )
    return index


def add_run_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("run", help="consume images.submitted and write verdicts (a consumer-group member)")
    p.add_argument("--weights", help="weights file or 'default' (overrides CIFAKE_SCORER_WEIGHTS)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--metrics-port", type=int, help="0 picks a free port")
    p.add_argument("--group", help="consumer group id (default: scorer)")
    p.add_argument("--topic", help="input topic (default: images.submitted)")
    p.add_argument("--max-batch", type=int, help="records per micro-batch (default 256)")
    p.add_argument("--max-records", type=int, help="stop after this many records (tests, benchmarks)")
    p.add_argument("--idle-timeout", type=float, help="stop after this many seconds without records")

    def run(args: argparse.Namespace) -> int:
        settings = cli.settings_from(
            ScorerSettings,
            args,
            weights="weights",
            device="device",
            metrics_port="metrics_port",
            group="group_id",
            topic="input_topic",
            max_batch="max_batch",
        )
        stats = run_scorer(load(StackSettings), settings, args.max_records, args.idle_timeout)
        return cli.print_result(stats.summary())

    return run
