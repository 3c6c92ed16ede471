"""Retraining on the real stack with a tiny budget: the gate accepts or rejects by its rule, triggers, and a
stopped run publishes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from prometheus_client import generate_latest

from ingest.metrics import new_registry
from ingest.settings import StackSettings
from ingest.storage import S3Store
from retrainer.registry import Announcer, ModelRegistry
from retrainer.retrain import Abandoned
from retrainer.settings import GateSettings, RetrainerSettings, TrainBudget
from retrainer.synthetic import make_synthetic_cifake
from retrainer.worker import RetrainWorker, WorkerMetrics
from tests.integration.test_retrainer_registry import announcements
from tests.retrainer_helpers import insert_images, models_topic
from tests.scorer_helpers import make_weights, upload_images

pytestmark = pytest.mark.integration

BUDGET = TrainBudget(steps=30, batch_size=32, replay=120, base_val_max=80, holdout_fraction=0.3, threads=1)


@pytest.fixture
def mtopic(stack: StackSettings) -> Iterator[str]:
    with models_topic(stack) as t:
        yield t


def label_feedback(stack: StackSettings, root: Path, moderator: str = "m1") -> list[str]:
    """Upload a synthetic CIFAKE folder's images, register them in `images`, label them by their folder."""
    files = sorted((root / "train").rglob("*.jpg"))
    keys = upload_images(stack, [f.read_bytes() for f in files])
    insert_images(stack, keys, [f"s3://images/{k}" for k in keys])
    conn = psycopg2.connect(stack.pg.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            for f, k in zip(files, keys, strict=True):
                cur.execute(
                    "INSERT INTO feedback (image_id, moderator, label, labelled_at)"
                    " VALUES (%s, %s, %s, now()) ON CONFLICT DO NOTHING",
                    (k, moderator, "fake" if f.parent.name == "FAKE" else "real"),
                )
    finally:
        conn.close()
    return keys


def settings_for(base: Path, topic: str, prefix: str, gate_settings: GateSettings) -> RetrainerSettings:
    return RetrainerSettings(
        base_data=str(base),
        models_topic=topic,
        model_key_prefix=prefix,
        metrics_port=None,
        worker_metrics_port=None,
        gate=gate_settings,
        budget=BUDGET,
        trigger_labels=10,
        trigger_interval_s=0,
    )


def test_retrain_gate_accepts_and_rejects_by_the_rule(
    iso: StackSettings, mtopic: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFAKE_CACHE_DIR", str(tmp_path / "cache"))
    base = make_synthetic_cifake(tmp_path / "base", n_per_class=100, seed=0)
    label_feedback(iso, make_synthetic_cifake(tmp_path / "fb", n_per_class=60, seed=7))
    prefix = f"test-{uuid.uuid4().hex[:8]}/"
    registry = ModelRegistry(iso, S3Store(iso.s3), Announcer(iso, mtopic), key_prefix=prefix)
    champ_path = make_weights(tmp_path / "champ.safetensors", "champ", seed=3)
    registry.publish(
        champ_path.read_bytes(),
        version="champ",
        parent=None,
        status="champion",
        trigger="initial",
        metrics={},
        data_info={},
    )

    accept = GateSettings(delta=-1.0, epsilon=1.0, min_holdout=5)
    metrics_registry = new_registry()
    worker = RetrainWorker(
        iso, settings_for(base, mtopic, prefix, accept), registry, WorkerMetrics.create(metrics_registry)
    )
    assert worker.due() == "feedback_count"  # 120 labels >= 10
    out = worker.run_once("manual")
    assert out.record is not None and out.accepted
    m = out.record.metrics
    assert m["steps"] == BUDGET.steps and m["n_holdout"] >= 5 and m["n_feedback_train"] > 0
    assert m["holdout_gain"] >= accept.delta and m["base_val_drop"] <= accept.epsilon
    assert out.record.status == "champion" and out.record.parent == "champ"
    # What the console's Models page shows for a fine-tuned version, beside the gate's figures.
    assert {"base_val_auroc", "base_val_ece", "val_pfake_hist"} <= set(out.record.metrics)
    assert out.record.data["feedback"]["labels"] == 120 and out.record.data["feedback"]["unavailable"] == 0
    champion = registry.champion()
    assert champion is not None and champion.version == out.record.version
    assert [a.version for a in announcements(iso, mtopic)] == ["champ", out.record.version]
    assert worker.due() is None  # no labels since the run's cutoff
    exposed = generate_latest(metrics_registry).decode()
    assert 'retrainer_retrains_total{outcome="published"} 1.0' in exposed
    assert f'retrainer_champion_info{{version="{out.record.version}"}} 1.0' in exposed
    assert "retrainer_feedback_labels 120.0" in exposed and "retrainer_training_seconds_count 1.0" in exposed

    # Same data, a delta no candidate can reach: rejected with the reason, champion and topic unchanged.
    reject = GateSettings(delta=1.01, epsilon=1.0, min_holdout=5)
    worker = RetrainWorker(iso, settings_for(base, mtopic, prefix, reject), registry)
    out2 = worker.run_once("manual")
    assert out2.record is not None and not out2.accepted and out2.record.status == "rejected"
    assert any("below delta" in r for r in out2.record.reasons)
    assert out2.record.parent == out.record.version
    champion = registry.champion()
    assert champion is not None and champion.version == out.record.version
    assert [a.version for a in announcements(iso, mtopic)] == ["champ", out.record.version]

    # A stop request during training abandons the run: nothing uploaded, registered or announced.
    worker.stop_event.set()
    with pytest.raises(Abandoned):
        worker.run_once("manual")
    assert len(registry.versions()) == 3

    # The schedule trigger: one new label and the interval elapsed.
    label_feedback(iso, tmp_path / "fb", moderator="m2")
    scheduled = settings_for(base, mtopic, prefix, reject).model_copy(
        update={"trigger_labels": 1000, "trigger_interval_s": 0.001}
    )
    assert RetrainWorker(iso, scheduled, registry).due() == "schedule"
