"""The retrainer's service and registry subcommands, kept apart from the training CLIs in ``__main__``."""

from __future__ import annotations

import argparse

from retrainer.models_cli import add_models_command, run_models_command

SERVICE_COMMANDS = frozenset({"models"})


def add_service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_models_command(sub)


def run_service_command(args: argparse.Namespace) -> int:
    if args.command == "models":
        return run_models_command(args)
    raise SystemExit(f"unknown command {args.command}")
