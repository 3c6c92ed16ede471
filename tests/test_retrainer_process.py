"""`python -m retrainer run` as a real process: it starts the worker process, feedback flows in, the worker
retrains on the label trigger and publishes, and SIGTERM stops both cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest.contracts import Feedback, encode
from ingest.db import connect
from ingest.settings import StackSettings
from ingest.storage import S3Store
from retrainer.registry import Announcer, ModelRegistry
from retrainer.synthetic import make_synthetic_cifake
from tests.kafka_helpers import produce, wait_until
from tests.retrainer_helpers import insert_images, isolated_schema, models_topic
from tests.scorer_helpers import make_weights, upload_images

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def iso(stack: StackSettings) -> Iterator[StackSettings]:
    with isolated_schema(stack) as s:
        yield s


@pytest.fixture
def mtopic(stack: StackSettings) -> Iterator[str]:
    with models_topic(stack) as t:
        yield t


def feedback_count(stack: StackSettings) -> int:
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM feedback")
        row = cur.fetchone()
    return int(row[0]) if row else 0


def test_run_starts_the_worker_which_retrains_on_the_label_trigger(
    iso: StackSettings, mtopic: str, topic: str, group: str, tmp_path: Path
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}/"
    registry = ModelRegistry(iso, S3Store(iso.s3), Announcer(iso, mtopic), key_prefix=prefix)
    champ = make_weights(tmp_path / "champ.safetensors", "champ", seed=3)
    registry.publish(
        champ.read_bytes(),
        version="champ",
        parent=None,
        status="champion",
        trigger="initial",
        metrics={},
        data_info={},
    )
    base = make_synthetic_cifake(tmp_path / "base", n_per_class=60, seed=0)
    files = sorted((make_synthetic_cifake(tmp_path / "fb", n_per_class=40, seed=5) / "train").rglob("*.jpg"))
    keys = upload_images(iso, [f.read_bytes() for f in files])
    insert_images(iso, keys, [f"s3://images/{k}" for k in keys])

    env = {
        **os.environ,
        "CIFAKE_PG__DSN": iso.pg.dsn.get_secret_value(),
        "CIFAKE_CACHE_DIR": str(tmp_path / "cache"),
        "CIFAKE_RETRAINER_FEEDBACK_TOPIC": topic,
        "CIFAKE_RETRAINER_GROUP_ID": group,
        "CIFAKE_RETRAINER_MODELS_TOPIC": mtopic,
        "CIFAKE_RETRAINER_MODEL_KEY_PREFIX": prefix,
        "CIFAKE_RETRAINER_BASE_DATA": str(base),
        "CIFAKE_RETRAINER_METRICS_PORT": "0",
        "CIFAKE_RETRAINER_WORKER_METRICS_PORT": "0",
        "CIFAKE_RETRAINER_WORKER_POLL_S": "0.5",
        "CIFAKE_RETRAINER_TRIGGER_LABELS": str(len(keys)),
        "CIFAKE_RETRAINER_TRIGGER_INTERVAL_S": "0",
        "CIFAKE_RETRAINER_GATE": json.dumps({"delta": -1.0, "epsilon": 1.0, "min_holdout": 1}),
        "CIFAKE_RETRAINER_BUDGET": json.dumps(
            {"steps": 10, "batch_size": 16, "replay": 40, "base_val_max": 20, "threads": 1}
        ),
    }
    proc = subprocess.Popen([sys.executable, "-m", "retrainer", "run"], cwd=ROOT, env=env)
    try:
        now = datetime.now(UTC)
        msgs = [
            Feedback(
                image_id=k,
                label="fake" if f.parent.name == "FAKE" else "real",
                moderator="m1",
                labelled_at=now,
            )
            for f, k in zip(files, keys, strict=True)
        ]
        produce(iso, topic, [(m.image_id.encode(), encode(m)) for m in msgs])
        wait_until(lambda: feedback_count(iso) == len(keys), 60, "every label stored")
        wait_until(lambda: len(registry.versions()) == 2, 120, "the worker's retrain to be registered")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0
    new = registry.versions()[-1]
    assert new.trigger == "feedback_count" and new.parent == "champ" and new.status == "champion"
    assert new.data["feedback"]["labels"] == len(keys)
