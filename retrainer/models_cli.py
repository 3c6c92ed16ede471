"""``python -m retrainer models list|show|promote|rollback|register-default``: the registry for operators."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ingest.settings import StackSettings, load
from ingest.storage import S3Store
from ingest.times import parse_since
from ingest.topics import IMAGES_SUBMITTED
from retrainer.registry import Announcer, ModelRecord, ModelRegistry, RegistryError, sha256_hex
from retrainer.rescore import rescore
from retrainer.settings import RetrainerSettings
from scorer.weights import DEFAULT_WEIGHTS, read_meta

logger = logging.getLogger(__name__)

# Metrics shown in the table (when present); everything is in --json.
TABLE_METRICS = ("holdout_accuracy", "base_val_accuracy", "val_accuracy")


def open_registry(stack: StackSettings, settings: RetrainerSettings) -> ModelRegistry:
    return ModelRegistry(
        stack,
        S3Store(stack.s3),
        Announcer(stack, settings.models_topic),
        key_prefix=settings.model_key_prefix,
    )


def format_table(records: list[ModelRecord]) -> str:
    headers = ["version", "status", "parent", "trigger", "created", *TABLE_METRICS, "sha256"]
    rows = []
    for r in records:
        rows.append(
            [
                r.version,
                r.status,
                r.parent or "-",
                r.trigger or "-",
                r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                *(
                    f"{float(r.metrics[m]):.4f}" if isinstance(r.metrics.get(m), int | float) else "-"
                    for m in TABLE_METRICS
                ),
                r.sha256[:12],
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def register_default(registry: ModelRegistry, path: Path) -> tuple[ModelRecord, str]:
    """Register ``path`` (the shipped weights) idempotently; returns (record, what happened).

    First champion when the registry has none; when a champion already exists, the file is registered as a
    candidate (an operator promotes it) so that re-running ``deploy/stack up`` never replaces a fine-tuned
    champion. The same bytes registered twice are a no-op.
    """
    data = path.read_bytes()
    digest = sha256_hex(data)
    existing = registry.find_by_sha256(digest)
    if existing is not None:
        if existing.status == "champion" and existing.announced_at is None:
            registry.reconcile()
        return existing, "already registered"
    meta = read_meta(path)
    # Same name the scorer gives this file when it loads it directly: no needless hot swap.
    version = meta.version or f"sha-{digest[:12]}"
    if registry.get(version) is not None:
        version = f"{version}-{digest[:8]}"
    has_champion = registry.champion() is not None
    record = registry.publish(
        data,
        version=version,
        parent=meta.parent_version,
        status="candidate" if has_champion else "champion",
        trigger="initial",
        metrics=dict(meta.metrics),
        data_info={"fingerprint": meta.data_fingerprint, "split": meta.split, "source": str(path.name)},
        reasons=["a champion already existed; promote by hand"] if has_champion else [],
    )
    return record, "registered as " + record.status


def add_models_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="model registry: list, show, promote, rollback, register-default")
    p.add_argument("--topic", help="announcement topic (default: models.published)")
    msub = p.add_subparsers(dest="models_command", required=True)
    ls = msub.add_parser("list", help="all versions, oldest first")
    ls.add_argument("--json", action="store_true")
    show = msub.add_parser("show", help="one version with metrics, data and its event history")
    show.add_argument("version", nargs="?", help="default: the champion")
    show.add_argument("--json", action="store_true")
    pr = msub.add_parser("promote", help="make VERSION the champion and announce it")
    pr.add_argument("version")
    pr.add_argument("--force", action="store_true", help="also promote a version the gate rejected")
    pr.add_argument("--json", action="store_true")
    rb = msub.add_parser("rollback", help="re-announce the previous champion")
    rb.add_argument("--json", action="store_true")
    for q in (pr, rb):
        q.add_argument(
            "--rescore-since", help="then resubmit what the old champion scored since (2h, 1d, ISO)"
        )
        q.add_argument(
            "--rescore-topic", default=IMAGES_SUBMITTED, help="where to resubmit (images.submitted)"
        )
        q.add_argument(
            "--rescore-wait", type=float, default=120.0, help="seconds to wait for the new version"
        )
    rd = msub.add_parser("register-default", help="register the shipped weights (first champion); idempotent")
    rd.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    rd.add_argument("--json", action="store_true")


def run_models_command(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"models_topic": args.topic} if args.topic else {}
    stack = load(StackSettings)
    registry = open_registry(stack, load(RetrainerSettings, **overrides))
    try:
        return _dispatch(registry, args)
    except RegistryError as e:
        print(f"error: {e}")
        return 1


def _emit(record: ModelRecord, as_json: bool, note: str, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        print(json.dumps(record.to_json() | (extra or {}) | ({"result": note} if note else {}), default=str))
    else:
        print(format_table([record]))
        if note:
            print(note)
        if extra and "rescore" in extra:
            r = extra["rescore"]
            print(
                f"re-scoring: {r['resubmitted']} image(s) of {r['version']} resubmitted, "
                f"{r['without_reference']} without a reference"
            )
        for e in (extra or {}).get("events", []):
            print(f"  {e['at']}  {e['event']}  {json.dumps(e['detail'])}")


def _dispatch(registry: ModelRegistry, args: argparse.Namespace) -> int:
    cmd = args.models_command
    if cmd == "list":
        records = registry.versions()
        if args.json:
            print(json.dumps([r.to_json() for r in records], default=str))
        else:
            print(format_table(records))
        return 0
    if cmd == "show":
        record = registry.get(args.version) if args.version else registry.champion()
        if record is None:
            raise RegistryError(f"no model version {args.version!r}" if args.version else "no champion")
        extra = {"events": registry.events(record.version)}
        if not args.json:
            print(
                json.dumps(
                    {"metrics": record.metrics, "data": record.data, "reasons": record.reasons}, indent=2
                )
            )
        _emit(record, args.json, "", extra)
        return 0
    if cmd in ("promote", "rollback"):
        old = registry.champion()
        if cmd == "promote":
            record, note = registry.promote(args.version, force=args.force), "promoted and announced"
        else:
            record, note = registry.rollback(), "rolled back; announced"
        rescored: dict[str, Any] = {}
        if args.rescore_since and old is not None:
            since = parse_since(args.rescore_since)
            result = rescore(
                registry.stack,
                old.version,
                since,
                args.rescore_topic,
                new_version=record.version,
                wait_s=args.rescore_wait,
            )
            rescored["rescore"] = dataclasses.asdict(result)
        _emit(record, args.json, note, rescored)
        return 0
    if cmd == "register-default":
        path = Path(args.weights)
        if not path.is_file():
            print(f"no weights at {path}; nothing to register")
            return 0
        record, note = register_default(registry, path)
        _emit(record, args.json, note)
        return 0
    raise RegistryError(f"unknown models command {cmd}")
