"""Helpers for the explainer's integration tests: images as the scorer leaves them, verdicts, reading back."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from explainer.service import ExplainerSettings
from explainer.sink import BUCKET
from ingest.contracts import Verdict, encode, utcnow
from ingest.db import connect
from ingest.settings import StackSettings
from ingest.storage import S3Store
from tests.kafka_helpers import produce
from tests.scorer_helpers import jpeg, upload_images


@dataclass(frozen=True)
class Row:
    image_id: str
    model_version: str
    method: str
    keys: dict[str, str]
    evidence: dict[str, Any]


def stored_images(stack: StackSettings, ids: list[str], seed: int, vanish: bool = False) -> list[str]:
    """What the scorer leaves behind for ``ids``: image bytes in bucket ``images`` and ``images`` rows.

    With ``vanish=True`` the objects are deleted again after the rows were written (an image removed
    from the store between scoring and explaining). Keys are content hashes, so a vanishing image must
    have bytes no other test uses: pass a seed of its own.
    """
    blobs = [jpeg(seed + i) for i in range(len(ids))]
    keys = upload_images(stack, blobs)
    with connect(stack.pg) as conn, conn.cursor() as cur:
        for image_id, key in zip(ids, keys, strict=True):
            cur.execute(
                "INSERT INTO images (id, ref, sha256, source, submitted_at) VALUES (%s, %s, %s, %s, now())"
                " ON CONFLICT (id) DO NOTHING",
                (image_id, f"s3://images/{key}", key, "test"),
            )
    if vanish:
        client = S3Store(stack.s3).client
        for key in keys:
            client.remove_object("images", key)
    return keys


def register_model(stack: StackSettings, version: str, weights: Path) -> None:
    """Put ``weights`` where the retrainer would: bucket ``models`` plus a ``models`` row."""
    data = weights.read_bytes()
    key = f"tests/{version}.safetensors"
    S3Store(stack.s3).put("models", key, data)
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO models (version, sha256, object_key) VALUES (%s, %s, %s)"
            " ON CONFLICT (version) DO NOTHING",
            (version, hashlib.sha256(data).hexdigest(), key),
        )


def send_verdicts(
    stack: StackSettings, topic: str, ids: list[str], version: str, labels: list[str] | str = "fake"
) -> None:
    labels = [labels] * len(ids) if isinstance(labels, str) else labels
    now = utcnow()
    p = {"fake": 0.97, "uncertain": 0.52, "real": 0.03}
    msgs = [
        Verdict(
            image_id=i,
            model_version=version,
            p_fake=p[label],
            label=label,  # type: ignore[arg-type]
            threshold=0.5,
            submitted_at=now,
            scored_at=now,
        )
        for i, label in zip(ids, labels, strict=True)
    ]
    produce(stack, topic, [(m.image_id.encode(), encode(m)) for m in msgs])


def explanation_rows(stack: StackSettings, ids: list[str]) -> list[Row]:
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT image_id, model_version, method, keys, evidence FROM explanations"
            " WHERE image_id = ANY(%s)",
            (ids,),
        )
        return [Row(r[0], r[1], r[2], r[3], r[4]) for r in cur.fetchall()]


def objects_under(stack: StackSettings, image_id: str) -> list[str]:
    client = S3Store(stack.s3).client
    return sorted(
        str(o.object_name) for o in client.list_objects(BUCKET, prefix=f"{image_id}/", recursive=True)
    )


def check_objects(stack: StackSettings, row: Row) -> None:
    """The three objects of ``row`` exist and open: two PNGs of the right shape and a matching sidecar."""
    store = S3Store(stack.s3)
    with Image.open(io.BytesIO(store.get(BUCKET, row.keys["map"], 1 << 20))) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (32, 32)
    with Image.open(io.BytesIO(store.get(BUCKET, row.keys["overlay"], 1 << 22))) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (256, 256)
    doc = json.loads(store.get(BUCKET, row.keys["sidecar"], 1 << 20))
    assert doc["model_version"] == row.model_version and doc["method"] == row.method
    assert doc["image_id"] == row.image_id and doc == row.evidence


def explainer_settings(topic: str, group: str, out_topic: str, weights: Path, **kw: Any) -> ExplainerSettings:
    base: dict[str, Any] = {
        "input_topic": topic,
        "output_topic": out_topic,
        "group_id": group,
        "weights": str(weights),
        "metrics_port": None,
        "follow_models": False,
        "max_batch": 16,
        "max_wait_ms": 20,
        "device": "cpu",
        "poll_timeout_ms": 200,
    }
    base.update(kw)
    return ExplainerSettings(**base)
