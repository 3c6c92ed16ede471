"""The command-line scaffold every ``python -m <package>`` shares.

A command is a function that adds its argparse subparser(s) and returns the handler that runs them, so each
command's flags sit next to its code and the package's ``__main__`` only lists them. ``main`` parses,
configures logging once (the only place handlers are set), runs the package's start-up hook and dispatches.
Commands build settings with ``settings_from`` (environment, then the flags that were given) and print
their outcome with ``print_result``: one JSON line, last on stdout, for scripts and benchmarks to read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from pydantic_settings import BaseSettings

from ingest.settings import load

Handler: TypeAlias = Callable[[argparse.Namespace], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Command: TypeAlias = Callable[[SubParsers], Handler]
S = TypeVar("S", bound=BaseSettings)


def configure_logging(level: str = "INFO") -> None:
    """Entry points call this once; library modules only ever create loggers."""
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main(
    prog: str,
    description: str | None,
    commands: Sequence[Command],
    argv: list[str] | None = None,
    before: Callable[[], object] | None = None,
) -> int:
    """Parse ``argv``, set up logging, call ``before`` (process-wide set-up), run the chosen command."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Handler] = {}
    for add in commands:
        before_add = set(sub.choices)
        handler = add(sub)
        for name in set(sub.choices) - before_add:
            handlers[name] = handler
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if before is not None:
        before()
    return handlers[args.command](args)


def settings_from(cls: type[S], args: argparse.Namespace, **flags: str) -> S:
    """``cls`` from the environment, with each ``flag=field`` whose flag was given on the command line
    overriding that field (a flag left at None keeps the environment's value)."""
    given = {field: getattr(args, flag, None) for flag, field in flags.items()}
    return load(cls, **{field: value for field, value in given.items() if value is not None})


def print_result(result: Mapping[str, Any] | Sequence[Any]) -> int:
    """Print a command's result as one JSON line on stdout; returns 0, the exit code of success."""
    print(json.dumps(result, default=str), flush=True)
    return 0
