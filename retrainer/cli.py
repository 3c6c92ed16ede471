"""The retrainer's service and registry subcommands, kept apart from the training CLIs in ``__main__``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ingest.settings import StackSettings, load
from retrainer.models_cli import add_models_command, run_models_command
from retrainer.settings import RetrainerSettings

SERVICE_COMMANDS = frozenset({"models", "run"})


def add_service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_models_command(sub)
    p = sub.add_parser("run", help="consume moderation.feedback into PostgreSQL (a consumer-group member)")
    p.add_argument("--topic", help="feedback topic (default: moderation.feedback)")
    p.add_argument("--group", help="consumer group id (default: retrainer)")
    p.add_argument("--metrics-port", type=int, help="0 picks a free port")
    p.add_argument("--max-records", type=int, help="stop after this many records (tests)")
    p.add_argument("--idle-timeout", type=float, help="stop after this many seconds without records")


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
    if args.command == "run":
        from retrainer.service import run_feedback

        settings = _settings(args, topic="feedback_topic", group="group_id", metrics_port="metrics_port")
        stats = run_feedback(load(StackSettings), settings, args.max_records, args.idle_timeout)
        print(json.dumps({"stopped_by": stats.stopped_by, "processed": stats.processed,
                          "dead_lettered": stats.dead_lettered}))  # fmt: skip
        return 0
    raise SystemExit(f"unknown command {args.command}")
