"""The retrainer's service and registry subcommands, kept apart from the training CLIs in ``__main__``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ingest.settings import StackSettings, load
from retrainer.models_cli import add_models_command, open_registry, run_models_command
from retrainer.settings import RetrainerSettings

SERVICE_COMMANDS = frozenset({"models", "known", "run", "worker", "retrain-now"})


def add_service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_models_command(sub)
    from retrainer.known_cli import add_known_command

    add_known_command(sub)
    p = sub.add_parser("run", help="consume moderation.feedback into PostgreSQL; starts the retrain worker")
    p.add_argument("--topic", help="feedback topic (default: moderation.feedback)")
    p.add_argument("--group", help="consumer group id (default: retrainer)")
    p.add_argument("--metrics-port", type=int, help="0 picks a free port")
    p.add_argument("--no-worker", action="store_true", help="do not start the retrain worker process")
    p.add_argument("--max-records", type=int, help="stop after this many records (tests)")
    p.add_argument("--idle-timeout", type=float, help="stop after this many seconds without records")
    w = sub.add_parser("worker", help="the retrain worker alone: triggers, fine-tune, gate, publish")
    w.add_argument("--max-runs", type=int, help="exit after this many runs")
    n = sub.add_parser("retrain-now", help="one retrain now (trigger 'manual'); prints the outcome as JSON")
    n.add_argument("--base-data", help="CIFAKE folder or zip for replay and base validation")


def _settings(args: argparse.Namespace, **names: str) -> RetrainerSettings:
    overrides: dict[str, Any] = {}
    for arg, field in names.items():
        value = getattr(args, arg, None)
        if value is not None:
            overrides[field] = value
    return load(RetrainerSettings, **overrides)


def run_service_command(args: argparse.Namespace) -> int:
    if args.command == "models":
        return run_models_command(args)
    stack = load(StackSettings)
    if args.command == "known":
        from retrainer.known_cli import run_known_command

        return run_known_command(args, stack, _settings(args))
    if args.command == "run":
        from retrainer.service import run_feedback, spawn_worker, stop_worker

        settings = _settings(args, topic="feedback_topic", group="group_id", metrics_port="metrics_port")
        worker = None if args.no_worker else spawn_worker()
        try:
            stats = run_feedback(stack, settings, args.max_records, args.idle_timeout)
        finally:
            if worker is not None:
                stop_worker(worker)
        print(
            json.dumps(
                {
                    "stopped_by": stats.stopped_by,
                    "processed": stats.processed,
                    "dead_lettered": stats.dead_lettered,
                }
            )
        )
        return 0
    if args.command == "worker":
        from retrainer.worker import run_worker

        settings = _settings(args)
        run_worker(stack, settings, open_registry(stack, settings), args.max_runs)
        return 0
    if args.command == "retrain-now":
        from retrainer.worker import Busy, RetrainWorker

        settings = _settings(args, base_data="base_data")
        try:
            outcome = RetrainWorker(stack, settings, open_registry(stack, settings)).run_once("manual")
        except Busy as e:
            print(json.dumps({"error": str(e)}))
            return 1
        print(
            json.dumps(
                {
                    "version": outcome.record.version if outcome.record else None,
                    "status": outcome.record.status if outcome.record else "skipped",
                    "reasons": outcome.reasons,
                    "metrics": outcome.metrics,
                }
            )
        )
        return 0
    raise SystemExit(f"unknown command {args.command}")
