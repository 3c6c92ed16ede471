"""``python -m harness.pipeline``: the streaming scorer's pipeline benchmark, or with ``--soak`` its soak run.

The benchmark is ``harness/pipeline_bench.py``, the soak ``harness/soak.py``; this module only parses the
arguments and picks one, so that neither imports the other's entry point.
"""

from __future__ import annotations

import argparse

from harness.pipeline_bench import add_bench_arguments, run_bench
from harness.soak import add_soak_arguments, run_soak
from ingest.cli import configure_logging


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.pipeline",
        description="end-to-end pipeline benchmark on the running stack (JSON last line)",
    )
    p.add_argument("--log-level", default="INFO")
    add_bench_arguments(p)
    add_soak_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level)
    return run_soak(args) if args.soak else run_bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
