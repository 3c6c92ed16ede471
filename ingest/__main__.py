"""``python -m ingest``: command-line entry points of the ingest package."""

from __future__ import annotations

import argparse
import json
import sys

from ingest.service import configure_logging
from ingest.settings import StackSettings, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    smoke = sub.add_parser("smoke", help="round trip an image through MinIO, Kafka, the loop and PostgreSQL")
    smoke.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)

    if args.command == "smoke":
        from ingest.smoke import run_smoke

        result = run_smoke(load(StackSettings), timeout_s=args.timeout)
        print(json.dumps({"smoke": "ok", **result}))
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
