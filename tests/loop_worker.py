"""A consumer process for the shutdown tests: ``python -m tests.loop_worker TOPIC GROUP OUT``.

Each batch appends its values to OUT and fsyncs (its "durable write"), then takes ``--work``
seconds, which gives the test a window to signal it in the middle of a batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

from ingest.cli import configure_logging
from ingest.loop import Batch
from ingest.settings import StackSettings, load
from tests.kafka_helpers import make_loop


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("topic")
    p.add_argument("group")
    p.add_argument("out")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--work", type=float, default=0.2)
    args = p.parse_args()
    configure_logging("INFO")
    pause = threading.Event()

    def handle(batch: Batch) -> None:
        with open(args.out, "a") as f:
            for r in batch.records:
                f.write((r.value or b"").decode() + "\n")
            f.flush()
            os.fsync(f.fileno())
        print("batch-written", flush=True)
        pause.wait(args.work)  # simulated slow work after the write: the signal lands here

    loop = make_loop(load(StackSettings), args.topic, args.group, handle, max_batch=args.batch)
    stats = loop.run()
    print(json.dumps({"stopped_by": stats.stopped_by, "processed": stats.processed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
