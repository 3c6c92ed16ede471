"""The retrainer's service and registry subcommands, kept apart from the training CLIs in ``__main__``."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ingest.settings import StackSettings, load
from retrainer.models_cli import add_models_command, open_registry, run_models_command
from retrainer.settings import RetrainerSettings

SERVICE_COMMANDS = frozenset({"models", "known", "run", "worker", "retrain-now", "drift-bench"})


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
    _add_drift(sub)


def _add_drift(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from retrainer.drift import DriftConfig

    d = DriftConfig()
    p = sub.add_parser(
        "drift-bench", help="end-to-end drift experiment on the real stack (own topics/schema)"
    )
    p.add_argument(
        "--data",
        default=os.environ.get("CIFAKE_RETRAINER_BASE_DATA", d.data),
        required=not (os.environ.get("CIFAKE_RETRAINER_BASE_DATA") or d.data),
        help="CIFAKE folder or zip (default: $CIFAKE_RETRAINER_BASE_DATA)",
    )
    p.add_argument(
        "--old-categories",
        default=",".join(map(str, d.old_categories)),
        help="CIFAR-10 category indices the first champion is trained on",
    )
    p.add_argument("--arch", default=d.arch)
    p.add_argument("--init-steps", type=int, default=d.init_steps)
    p.add_argument("--init-max", type=int, default=d.init_max, help="training images for the first champion")
    p.add_argument("--init-weights", help="reuse this first champion (same seed, stream, probes, init-max)")
    p.add_argument("--stream", type=int, default=d.stream, help="images streamed (all categories)")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--label-share", type=float, default=d.label_share)
    p.add_argument("--max-labels", type=int, default=d.max_labels)
    p.add_argument("--eval-max", type=int, default=d.eval_max)
    p.add_argument("--steps", type=int, default=d.budget.steps, help="fine-tuning steps per retrain")
    p.add_argument("--replay", type=int, default=d.budget.replay)
    p.add_argument("--base-val-max", type=int, default=d.budget.base_val_max)
    p.add_argument("--lr", type=float, default=d.budget.lr)
    p.add_argument("--feedback-share", type=float, default=d.budget.feedback_share)
    p.add_argument("--interpolate", type=float, default=d.budget.interpolate, help="WiSE-FT weight (1: off)")
    p.add_argument("--delta", type=float, default=d.gate.delta)
    p.add_argument("--epsilon", type=float, default=d.gate.epsilon)
    p.add_argument("--threads", type=int, default=0, help="torch threads for training (0: measured)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out)
    p.add_argument("--keep", action="store_true", help="keep the run's topics and schema")


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
    if args.command == "drift-bench":
        return _drift(args, stack)
    raise SystemExit(f"unknown command {args.command}")


def _drift(args: argparse.Namespace, stack: StackSettings) -> int:
    from retrainer.drift import DriftConfig, run_drift_bench
    from retrainer.settings import GateSettings

    d = DriftConfig()
    cfg = DriftConfig(
        data=args.data,
        old_categories=tuple(int(c) for c in args.old_categories.split(",")),
        arch=args.arch,
        init_steps=args.init_steps,
        init_max=args.init_max,
        init_weights=args.init_weights,
        stream=args.stream,
        rounds=args.rounds,
        label_share=args.label_share,
        max_labels=args.max_labels,
        eval_max=args.eval_max,
        budget=d.budget.model_copy(
            update={
                "steps": args.steps,
                "replay": args.replay,
                "base_val_max": args.base_val_max,
                "lr": args.lr,
                "feedback_share": args.feedback_share,
                "interpolate": args.interpolate,
                "threads": args.threads,
                "seed": args.seed,
            }
        ),
        gate=GateSettings(delta=args.delta, epsilon=args.epsilon, min_holdout=d.gate.min_holdout),
        seed=args.seed,
        out=args.out,
        keep=args.keep,
    )
    print(json.dumps(run_drift_bench(stack, cfg)), flush=True)
    return 0
