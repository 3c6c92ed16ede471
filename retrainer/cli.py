"""The retrainer's service and registry subcommands, kept apart from the training CLIs in ``__main__``."""

from __future__ import annotations

import argparse

from ingest import cli
from ingest.cli import Command, Handler, SubParsers
from ingest.settings import StackSettings, load
from retrainer.models_cli import add_models_command, open_registry, run_models_command
from retrainer.settings import RetrainerSettings


def _add_models(sub: SubParsers) -> Handler:
    add_models_command(sub)
    return run_models_command


def _add_known(sub: SubParsers) -> Handler:
    from retrainer.known_cli import add_known_command, run_known_command

    add_known_command(sub)
    return lambda args: run_known_command(
        args, load(StackSettings), cli.settings_from(RetrainerSettings, args)
    )


def _add_run(sub: SubParsers) -> Handler:
    p = sub.add_parser("run", help="consume moderation.feedback into PostgreSQL; starts the retrain worker")
    p.add_argument("--topic", help="feedback topic (default: moderation.feedback)")
    p.add_argument("--group", help="consumer group id (default: retrainer)")
    p.add_argument("--metrics-port", type=int, help="0 picks a free port")
    p.add_argument("--no-worker", action="store_true", help="do not start the retrain worker process")
    p.add_argument("--max-records", type=int, help="stop after this many records (tests)")
    p.add_argument("--idle-timeout", type=float, help="stop after this many seconds without records")

    def run(args: argparse.Namespace) -> int:
        from retrainer.service import run_feedback, spawn_worker, stop_worker

        settings = cli.settings_from(
            RetrainerSettings, args, topic="feedback_topic", group="group_id", metrics_port="metrics_port"
        )
        worker = None if args.no_worker else spawn_worker()
        try:
            stats = run_feedback(load(StackSettings), settings, args.max_records, args.idle_timeout)
        finally:
            if worker is not None:
                stop_worker(worker)
        return cli.print_result(stats.summary())

    return run


def _add_worker(sub: SubParsers) -> Handler:
    w = sub.add_parser("worker", help="the retrain worker alone: triggers, fine-tune, gate, publish")
    w.add_argument("--max-runs", type=int, help="exit after this many runs")

    def run(args: argparse.Namespace) -> int:
        from retrainer.worker import run_worker

        stack, settings = load(StackSettings), cli.settings_from(RetrainerSettings, args)
        run_worker(stack, settings, open_registry(stack, settings), args.max_runs)
        return 0

    return run


def _add_retrain_now(sub: SubParsers) -> Handler:
    n = sub.add_parser("retrain-now", help="one retrain now (trigger 'manual'); prints the outcome as JSON")
    n.add_argument("--base-data", help="CIFAKE folder or zip for replay and base validation")

    def run(args: argparse.Namespace) -> int:
        from retrainer.worker import Busy, RetrainWorker

        stack = load(StackSettings)
        settings = cli.settings_from(RetrainerSettings, args, base_data="base_data")
        try:
            outcome = RetrainWorker(stack, settings, open_registry(stack, settings)).run_once("manual")
        except Busy as e:
            cli.print_result({"error": str(e)})
            return 1
        record = outcome.record
        return cli.print_result(
            {
                "version": record.version if record else None,
                "status": record.status if record else "skipped",
                "reasons": outcome.reasons,
                "metrics": outcome.metrics,
            }
        )

    return run


SERVICE_COMMANDS: list[Command] = [_add_models, _add_known, _add_run, _add_worker, _add_retrain_now]
