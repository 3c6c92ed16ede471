"""``python -m scorer <command>``: entry point (the only place logging handlers are configured).

Commands are argparse subcommands registered in ``COMMANDS``; other components add theirs (e.g. ``run``,
``score``) the same way: a function that adds a subparser and returns the handler.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ingest import cli
from ingest.cli import Command, Handler, SubParsers
from ingest.memory import limit_malloc_arenas


def _add_bench_model(sub: SubParsers) -> Handler:
    p = sub.add_parser("bench-model", help="raw inference throughput at batch 1, 32 and 256 (JSON last line)")
    p.add_argument("--weights", default="default", help="weights file, or 'default' for the shipped model")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ..."
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds timed per batch size")
    p.add_argument(
        "--runtime",
        default="auto",
        choices=("auto", "onnxruntime", "torch"),
        help="what runs the model: auto is ONNX Runtime on CPU, PyTorch on CUDA (as in the scorer)",
    )

    def run(args: argparse.Namespace) -> int:
        import torch

        from scorer.bench import bench_serving
        from scorer.engine import ServingModel

        if args.threads:
            torch.set_num_threads(args.threads)
        model = ServingModel.load(args.weights, args.device, runtime=args.runtime)
        logging.getLogger(__name__).info(
            "benchmarking %s (%s) on %s with %s", model.version, model.meta.arch, model.device, model.runtime
        )
        return cli.print_result(bench_serving(model, min_time=args.min_time))

    return run


def _add_streaming(sub: SubParsers) -> Handler:
    from scorer.service import add_run_command

    return add_run_command(sub)


def _add_offline(sub: SubParsers) -> Handler:
    from scorer.offline import add_score_command

    return add_score_command(sub)


COMMANDS: list[Command] = [
    _add_bench_model,
    _add_streaming,
    _add_offline,
]


def main(argv: list[str] | None = None) -> int:
    # Arenas are capped before the fetch and decode threads start: see ingest/memory.py.
    return cli.main("python -m scorer", "CIFAKE scorer", COMMANDS, argv, before=limit_malloc_arenas)


if __name__ == "__main__":
    sys.exit(main())
