"""``python -m explainer run``: a consumer-group member that turns flagged verdicts into stored evidence."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable

import torch
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from explainer.cam import METHODS, Method, TargetSpec
from explainer.handler import ExplainerMetrics, ExplainHandler, Policy
from explainer.models import ModelCache, load_registered
from explainer.sink import BUCKET, PostgresExplanationSink
from ingest import cli
from ingest.decode import DecodeLimits
from ingest.fetch import Fetcher, FetchSettings
from ingest.loop import RunStats
from ingest.metrics import new_registry
from ingest.service import build_service
from ingest.settings import ServiceSettings, StackSettings, describe, load
from ingest.storage import S3Store
from ingest.topics import IMAGES_EXPLANATIONS, IMAGES_VERDICTS, MODELS_PUBLISHED
from scorer.engine import ServingModel
from scorer.hotswap import ModelWatcher

logger = logging.getLogger(__name__)


class ExplainerSettings(ServiceSettings):
    """``CIFAKE_EXPLAINER_*``; nested groups use ``__`` (e.g. ``CIFAKE_EXPLAINER_FETCH__WORKERS=4``)."""

    model_config = SettingsConfigDict(
        env_prefix="CIFAKE_EXPLAINER_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    group_id: str = "explainer"
    input_topic: str = IMAGES_VERDICTS
    output_topic: str = IMAGES_EXPLANATIONS
    models_topic: str = MODELS_PUBLISHED
    bucket: str = BUCKET
    metrics_port: int | None = 9102
    weights: str = "default"
    device: str = "auto"
    threads: int | None = Field(default=None, ge=1)
    # Which verdicts get evidence: "flagged" = fake and uncertain (the moderators' queue), "fake", "all".
    policy: Policy = "flagged"
    methods: list[Method] = Field(default_factory=lambda: list[Method](["gradcam"]), min_length=1)
    # The class the map explains; "fake" answers "what made it look generated".
    target: TargetSpec = "fake"
    max_batch: int = Field(default=64, ge=1, le=1024)
    max_wait_ms: int = Field(default=200, ge=0)
    model_cache_size: int = Field(default=3, ge=0, le=32)
    follow_models: bool = True
    write_workers: int = Field(default=4, ge=1, le=64)
    fetch: FetchSettings = FetchSettings()
    limits: DecodeLimits = DecodeLimits()


def run_explainer(
    stack: StackSettings,
    settings: ExplainerSettings,
    max_records: int | None = None,
    idle_timeout: float | None = None,
) -> RunStats:
    """Run until stopped (signal, ``max_records``, ``idle_timeout``); commits only durable batches."""
    logger.info("explainer settings: %s", describe(settings))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    store = S3Store(stack.s3)
    registry = new_registry()
    with contextlib.ExitStack() as resources:
        fetcher = Fetcher(store, settings.fetch)
        resources.callback(fetcher.close)
        sink = PostgresExplanationSink(stack.pg)
        resources.callback(sink.close)
        models = ModelCache(
            ServingModel.load(settings.weights, settings.device),
            settings.methods,
            loader=lambda v: load_registered(sink, store, v, settings.device),
            capacity=settings.model_cache_size,
        )
        watcher = None
        if settings.follow_models:
            watcher = ModelWatcher(
                stack.kafka,
                store,
                settings.device,
                registry,
                app="explainer",
                topic=settings.models_topic,
                current_version=lambda: models.current.version,
            )
        handler = ExplainHandler(
            fetcher=fetcher,
            limits=settings.limits,
            sink=sink,
            store=store,
            models=models,
            next_model=watcher.take if watcher is not None else lambda: None,
            metrics=ExplainerMetrics.create(registry),
            policy=settings.policy,
            methods=settings.methods,
            target=settings.target,
            output_topic=settings.output_topic,
            bucket=settings.bucket,
            write_workers=settings.write_workers,
        )
        resources.callback(handler.close)
        service = build_service(
            "explainer",
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


def add_run_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser(
        "run", help="consume images.verdicts and store Grad-CAM evidence (a consumer-group member)"
    )
    p.add_argument("--weights", help="weights file or 'default' (overrides CIFAKE_EXPLAINER_WEIGHTS)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--metrics-port", type=int, help="0 picks a free port")
    p.add_argument("--group", help="consumer group id (default: explainer)")
    p.add_argument("--topic", help="input topic (default: images.verdicts)")
    p.add_argument("--output-topic", help="output topic (default: images.explanations)")
    p.add_argument("--policy", choices=["flagged", "fake", "all"], help="which verdicts to explain")
    p.add_argument("--method", action="append", choices=list(METHODS), help="repeatable")
    p.add_argument("--max-batch", type=int, help="records per micro-batch (default 64)")
    p.add_argument("--max-records", type=int, help="stop after this many records (tests, benchmarks)")
    p.add_argument("--idle-timeout", type=float, help="stop after this many seconds without records")

    def run(args: argparse.Namespace) -> int:
        settings = cli.settings_from(
            ExplainerSettings,
            args,
            weights="weights",
            device="device",
            metrics_port="metrics_port",
            group="group_id",
            topic="input_topic",
            output_topic="output_topic",
            policy="policy",
            method="methods",
            max_batch="max_batch",
        )
        stats = run_explainer(load(StackSettings), settings, args.max_records, args.idle_timeout)
        return cli.print_result(stats.summary())

    return run
