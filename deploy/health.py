"""Readiness probe for the Kafka broker that `deploy/stack` starts.

    python -m deploy.health kafka HOST:PORT [--timeout SECONDS]

Exits 0 once the broker answers a metadata request, 1 when the timeout passes first. MinIO and PostgreSQL have
probes of their own (`/minio/health/ready`, `pg_isready`), which the script calls directly.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

logger = logging.getLogger(__name__)


def kafka_answers_metadata(bootstrap_servers: str, timeout_s: float) -> bool:
    """True once a metadata request to `bootstrap_servers` succeeds and names at least one broker."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining_ms = max(int((deadline - time.monotonic()) * 1000), 500)
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap_servers,
                client_id="cifake-stack-health",
                bootstrap_timeout_ms=remaining_ms,
                request_timeout_ms=min(remaining_ms, 5000),
            )
            try:
                if admin.describe_cluster().get("brokers"):
                    return True
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            logger.debug("kafka at %s not ready: %r", bootstrap_servers, exc)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)  # poll interval between probes, bounded by the deadline above


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.health", description="Readiness probes for deploy/stack."
    )
    sub = parser.add_subparsers(dest="service", required=True)
    kafka = sub.add_parser("kafka", help="wait until the broker answers metadata")
    kafka.add_argument("bootstrap_servers", help="host:port[,host:port...]")
    kafka.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="health: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # refused connections are expected while starting
    if kafka_answers_metadata(args.bootstrap_servers, args.timeout):
        return 0
    print(
        f"kafka at {args.bootstrap_servers} did not answer metadata within {args.timeout:g}s", file=sys.stderr
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
