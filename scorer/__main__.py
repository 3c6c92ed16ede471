"""``python -m scorer <command>``: entry point (the only place logging handlers are configured).

Commands are argparse subcommands registered in ``COMMANDS``; other components add theirs (e.g. ``run``,
``score``) the same way: a function that adds a subparser and returns the handler.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import TypeAlias

from ingest.memory import limit_malloc_arenas

Handler: TypeAlias = Callable[[argparse.Namespace], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_bench_model(sub: SubParsers) -> Handler:
    p = sub.add_parser("bench-model", help="raw inference throughput at batch 1, 32 and 256 (JSON last line)")
    p.add_argument("--weights", default="default", help="weights file, or 'default' for the shipped model")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ..."
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds timed per batch size")

    def run(args: argparse.Namespace) -> int:
        import torch

        from scorer.bench import bench_model
        from scorer.infer import pick_device
        from scorer.weights import load_weights

        if args.threads:
            torch.set_num_threads(args.threads)
        device = pick_device(args.device)
        model, meta = load_weights(args.weights, device=device)
        logging.getLogger(__name__).info("benchmarking %s (%s) on %s", meta.version, meta.arch, device)
        result = bench_model(model, device, meta.input_size, min_time=args.min_time)
        print(json.dumps(result), flush=True)
        return 0

    return run


def _add_streaming(sub: SubParsers) -> Handler:
    from scorer.service import add_run_command

    return add_run_command(sub)


def _add_offline(sub: SubParsers) -> Handler:
    from scorer.offline import add_score_command

    return add_score_command(sub)


COMMANDS: list[Callable[[SubParsers], Handler]] = [
    _add_bench_model,
    _add_streaming,
    _add_offline,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scorer", description="CIFAKE scorer")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Handler] = {}
    for add in COMMANDS:
        before = set(sub.choices)
        handler = add(sub)
        for name in set(sub.choices) - before:
            handlers[name] = handler
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    limit_malloc_arenas()  # before the fetch and decode threads start: see ingest/memory.py
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
