"""``python -m retrainer known import|export|remove``: operators' side of the known-content lists.

    python -m retrainer known export [--label fake] [--out list.csv]
    python -m retrainer known import list.csv [--note-prefix "from platform X"]
    python -m retrainer known remove PDQ [PDQ ...]

Import and remove write PostgreSQL in one transaction, then announce every entry they touched on
``known_content.updates`` and wait for the broker to acknowledge, so running scorers apply them within
seconds. Both are idempotent: if the announcement fails after the commit, running the same command again
announces the same states.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ingest.contracts import KnownContentUpdate
from ingest.db import transaction
from ingest.kafka import make_producer
from ingest.known_csv import CsvRow, parse_csv
from ingest.settings import StackSettings
from retrainer.known import announce, export_csv, import_rows
from retrainer.settings import RetrainerSettings
from scorer.known_watcher import row_to_update


def add_known_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "known", help="import, export or remove known-content list entries (CSV pdq,label,note)"
    )
    ks = p.add_subparsers(dest="known_command", required=True)
    e = ks.add_parser("export", help="write the active entries as CSV")
    e.add_argument("--label", choices=("real", "fake"))
    e.add_argument("--out", help="file to write (default: stdout)")
    i = ks.add_parser("import", help="add or update entries from a CSV (all rows or none)")
    i.add_argument("path", help="CSV with a header pdq,label[,note]; - reads stdin")
    i.add_argument("--note-prefix", default="", help="prepended to every row's note (e.g. the list's origin)")
    r = ks.add_parser("remove", help="take imported entries off the lists (by PDQ hash)")
    r.add_argument("pdq", nargs="+")


def run_known_command(args: argparse.Namespace, stack: StackSettings, settings: RetrainerSettings) -> int:
    if args.known_command == "export":
        return _export(stack, args)
    if args.known_command == "import":
        try:
            if args.path == "-":
                rows = parse_csv(sys.stdin)
            else:
                with open(args.path, newline="", encoding="utf-8") as f:
                    rows = parse_csv(f)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            print(f"known import: {args.path}: {e}; nothing imported", file=sys.stderr)
            return 2
        if args.note_prefix:
            rows = [CsvRow(r.pdq, r.label, f"{args.note_prefix} {r.note}".strip()) for r in rows]
        updates = _write(stack, lambda cur: import_rows(cur, rows))
    else:
        updates = _write(stack, lambda cur: _deactivate(cur, [h.strip().lower() for h in args.pdq]))
    _announce(stack, settings, updates)
    print(json.dumps({"command": args.known_command, "entries": len(updates), "announced": len(updates)}))
    return 0


def _export(stack: StackSettings, args: argparse.Namespace) -> int:
    with transaction(stack.pg) as cur:
        if args.out:
            with open(args.out, "w", newline="", encoding="utf-8") as f:
                n = export_csv(cur, f, args.label)
        else:
            n = export_csv(cur, sys.stdout, args.label)
    print(json.dumps({"command": "export", "entries": n}), file=sys.stderr)
    return 0


def _write(stack: StackSettings, work: Any) -> list[KnownContentUpdate]:
    with transaction(stack.pg) as cur:
        updates: list[KnownContentUpdate] = work(cur)
    return updates


def _deactivate(cur: Any, hashes: list[str]) -> list[KnownContentUpdate]:
    cur.execute(
        "UPDATE known_content SET active = false, updated_at = now()"
        " WHERE source = 'import' AND pdq = ANY(%s)"
        " RETURNING id, pdq, label, active, source, image_id, moderators, updated_at",
        (hashes,),
    )
    return [row_to_update(r) for r in cur.fetchall()]


def _announce(stack: StackSettings, settings: RetrainerSettings, updates: list[KnownContentUpdate]) -> None:
    if not updates or not settings.known_topic:
        return
    producer = make_producer(stack.kafka)
    try:
        futures = [producer.send(settings.known_topic, key=k, value=v) for k, v in announce(updates)]
        producer.flush()
        for f in futures:
            f.get(timeout=30)  # raises if the broker refused: the operator sees it and runs the command again
    finally:
        producer.close()
