"""``python -m ingest submit PATH...``: batch intake of files, folders and zip archives.

Each image goes through the same ``Intake.accept`` as the HTTP API (validated, stored under its
sha256, published once). Problems are reported one per line and the run goes on; the exit status is
non-zero only when nothing at all could be submitted. ``--wait`` then polls PostgreSQL until every
submitted image has a verdict (or ``--timeout``), prints a summary table and writes a CSV.
"""

from __future__ import annotations

import csv
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from ingest.db import Database
from ingest.errors import PermanentError
from ingest.intake import Intake, IntakeSettings
from ingest.kafka import make_producer
from ingest.settings import StackSettings
from ingest.sources import collect
from ingest.storage import S3Store

logger = logging.getLogger(__name__)

CSV_FIELDS = ["name", "image_id", "status", "code", "reason", "model_version", "p_fake", "label"]


@dataclass
class Row:
    name: str
    image_id: str = ""
    status: str = ""  # submitted | duplicate | refused | unreadable
    code: str = ""
    reason: str = ""
    model_version: str = ""
    p_fake: float | None = None
    label: str = ""


def submit_paths(
    stack: StackSettings,
    settings: IntakeSettings,
    paths: Sequence[str],
    source: str,
    err: TextIO,
    progress: bool = True,
) -> list[Row]:
    found = collect(paths, settings.limits.max_bytes)
    for problem in found.problems:
        print(f"submit: {problem}", file=err, flush=True)
    if not found.entries:
        return []
    db = Database(stack.pg)
    producer = make_producer(stack.kafka)
    intake = Intake(settings, S3Store(stack.s3), producer, db.connection)
    rows: list[Row] = []
    try:
        bar = tqdm(
            found.entries, file=err, disable=not progress, unit="img", desc="submit", dynamic_ncols=True
        )
        for entry in bar:
            row = Row(entry.name)
            rows.append(row)
            try:
                data = entry.read()
            except OSError as e:
                row.status, row.reason = "unreadable", str(e)
                bar.write(f"submit: {entry.name}: cannot read ({e})", file=err)
                continue
            try:
                acc = intake.accept(data, source, {"name": entry.name[-200:]})
            except PermanentError as e:
                row.status, row.code, row.reason = "refused", e.code, e.reason
                bar.write(f"submit: {entry.name}: refused, {e.code}: {e.reason}", file=err)
                continue
            row.image_id, row.status = acc.image_id, "duplicate" if acc.duplicate else "submitted"
    finally:
        producer.close(timeout=10)
        db.close()
    return rows


def wait_for_verdicts(stack: StackSettings, rows: list[Row], timeout: float) -> int:
    """Fill in each accepted row's latest verdict; returns how many are still missing at the deadline."""
    wanted = {r.image_id for r in rows if r.image_id}
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    found: dict[str, tuple[str, float, str]] = {}
    db = Database(stack.pg)
    try:
        while True:
            with db.cursor() as cur:
                cur.execute(
                    "SELECT DISTINCT ON (image_id) image_id, model_version, p_fake, label FROM verdicts"
                    " WHERE image_id = ANY(%s) ORDER BY image_id, scored_at DESC",
                    (sorted(wanted - set(found)),),
                )
                for image_id, mv, p, label in cur.fetchall():
                    found[image_id] = (mv, float(p), label)
            if len(found) == len(wanted) or time.monotonic() > deadline:
                break
            pause.wait(0.5)
    finally:
        db.close()
    for r in rows:
        if r.image_id in found:
            r.model_version, r.p_fake, r.label = found[r.image_id]
    return len(wanted) - len(found)


def print_summary(rows: list[Row], out: TextIO, show: int) -> None:
    statuses = Counter(r.status for r in rows)
    labels = Counter(r.label or ("(waiting)" if r.image_id else "-") for r in rows if r.image_id)
    print(f"\n{'name':<44} {'status':<10} {'verdict':<10} {'p_fake':>7}  model", file=out)
    print("-" * 90, file=out)
    for r in rows[:show]:
        p = f"{r.p_fake:.3f}" if r.p_fake is not None else ""
        verdict = r.label or r.code
        print(f"{r.name[-44:]:<44} {r.status:<10} {verdict:<10} {p:>7}  {r.model_version}", file=out)
    if len(rows) > show:
        print(f"... ({len(rows) - show} more rows in the CSV)", file=out)
    print("-" * 90, file=out)
    print("inputs: " + ", ".join(f"{k}={v}" for k, v in sorted(statuses.items())), file=out)
    if labels:
        print("verdicts: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())), file=out)


def write_csv(rows: list[Row], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in rows:
            w.writerow(
                [
                    r.name,
                    r.image_id,
                    r.status,
                    r.code,
                    r.reason,
                    r.model_version,
                    "" if r.p_fake is None else f"{r.p_fake:.6f}",
                    r.label,
                ]
            )
    tmp.replace(path)


def run_submit(
    stack: StackSettings,
    settings: IntakeSettings,
    paths: Sequence[str],
    *,
    source: str = "batch",
    wait: bool = False,
    timeout: float = 300.0,
    csv_path: Path | None = None,
    show: int = 25,
    out: TextIO,
    err: TextIO,
    progress: bool = True,
) -> int:
    rows = submit_paths(stack, settings, paths, source, err, progress)
    accepted = [r for r in rows if r.image_id]
    new = sum(r.status == "submitted" for r in rows)
    print(
        f"submit: {new} submitted, {len(accepted) - new} already known, {len(rows) - len(accepted)} refused"
        f" (topic {settings.topic})",
        file=err,
        flush=True,
    )
    if not accepted:
        print("submit: nothing could be submitted", file=err)
        return 1
    if wait:
        missing = wait_for_verdicts(stack, rows, timeout)
        if missing:
            print(
                f"submit: {missing} images have no verdict after {timeout:.0f}s (is a scorer running?)",
                file=err,
            )
        csv_path = csv_path or Path(f"submit-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.csv")
    if wait or csv_path:
        print_summary(rows, out, show)
    if csv_path:
        write_csv(rows, csv_path)
        print(f"submit: wrote {csv_path}", file=err)
    return 0
