"""The model registry on the real stack: publishing order, crash safety, promote/rollback, the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.contracts import ModelPublished, decode
from ingest.settings import StackSettings
from ingest.storage import S3Store
from retrainer.__main__ import main as retrainer_main
from retrainer.models_cli import register_default
from retrainer.registry import MODELS_BUCKET, Announcer, ModelRegistry, RegistryError, sha256_hex
from tests.kafka_helpers import end_offsets, read_all
from tests.retrainer_helpers import models_topic
from tests.scorer_helpers import make_weights

pytestmark = pytest.mark.integration


@pytest.fixture
def mtopic(stack: StackSettings) -> Iterator[str]:
    with models_topic(stack) as t:
        yield t


@pytest.fixture
def registry(iso: StackSettings, mtopic: str) -> ModelRegistry:
    return ModelRegistry(
        iso, S3Store(iso.s3), Announcer(iso, mtopic), key_prefix=f"test-{uuid.uuid4().hex[:8]}/"
    )


def announcements(stack: StackSettings, topic: str) -> list[ModelPublished]:
    """Every announcement on the (one-partition) topic so far: reads up to the end offset, no waiting."""
    (end,) = end_offsets(stack, topic).values() or (0,)
    return [decode(ModelPublished, v) for _p, _o, _k, v in read_all(stack, topic, end, timeout=10)]


def publish(registry: ModelRegistry, path: Path, version: str, status: str = "champion") -> None:
    registry.publish(
        path.read_bytes(),
        version=version,
        parent=None,
        status=status,  # type: ignore[arg-type]
        trigger="manual",
        metrics={"holdout_accuracy": 0.5, "base_val_accuracy": 0.6},
        data_info={"feedback": 0},
    )


def test_register_default_is_idempotent_and_announced(
    registry: ModelRegistry, tmp_path: Path, stack: StackSettings, mtopic: str
) -> None:
    path = make_weights(tmp_path / "default.safetensors", "default-test", seed=1)
    record, _ = register_default(registry, path)
    assert record.status == "champion" and record.trigger == "initial" and record.version == "default-test"
    again, note2 = register_default(registry, path)
    assert (again.version, note2) == ("default-test", "already registered")
    assert [r.version for r in registry.versions()] == ["default-test"]
    (msg,) = announcements(stack, mtopic)
    assert (msg.version, msg.sha256, msg.object_key) == (record.version, record.sha256, record.object_key)
    assert registry.fetch_weights(record) == path.read_bytes()
    # Other bytes later: registered as a candidate, the champion stays.
    other = make_weights(tmp_path / "other.safetensors", "default-test", seed=2)
    third, _ = register_default(registry, other)
    assert third.status == "candidate" and third.version.startswith("default-test-")
    champion = registry.champion()
    assert champion is not None and champion.version == "default-test"


def test_crash_between_upload_and_register_changes_nothing(
    registry: ModelRegistry, tmp_path: Path, stack: StackSettings, mtopic: str
) -> None:
    publish(registry, make_weights(tmp_path / "a.safetensors", "a", 1), "v-a")
    path = make_weights(tmp_path / "b.safetensors", "b", 2)

    def crash() -> None:
        raise RuntimeError("simulated crash after upload")

    with pytest.raises(RuntimeError):
        registry.publish(
            path.read_bytes(),
            version="v-b",
            parent="v-a",
            status="champion",
            trigger="manual",
            metrics={},
            data_info={},
            after_upload=crash,
        )
    assert registry.get("v-b") is None
    assert [(r.version, r.status) for r in registry.versions()] == [("v-a", "champion")]
    assert [m.version for m in announcements(stack, mtopic)] == ["v-a"]
    # the uploaded object is unreferenced, and reconcile has nothing to re-announce
    key = registry.object_key("v-b", sha256_hex(path.read_bytes()))
    assert S3Store(registry.stack.s3).stat(MODELS_BUCKET, key).size > 0
    with pytest.raises(RegistryError):  # versions are immutable: no second upload under a registered name
        publish(registry, path, "v-a")
    assert registry.reconcile() is False


def test_promote_rollback_walk_history_and_cli(
    registry: ModelRegistry,
    tmp_path: Path,
    stack: StackSettings,
    mtopic: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for i, v in enumerate(["v1", "v2", "v3"]):
        publish(registry, make_weights(tmp_path / f"{v}.safetensors", v, i), v)
    publish(registry, make_weights(tmp_path / "r.safetensors", "r", 9), "v-rejected", status="rejected")
    assert [(r.version, r.status) for r in registry.versions()] == [
        ("v1", "retired"),
        ("v2", "retired"),
        ("v3", "champion"),
        ("v-rejected", "rejected"),
    ]
    assert registry.rollback().version == "v2"
    assert registry.rollback().version == "v1"  # walks back, never toggles to v3
    with pytest.raises(RegistryError):
        registry.rollback()
    with pytest.raises(RegistryError):
        registry.promote("v-rejected")
    assert registry.promote("v3").version == "v3"
    assert [m.version for m in announcements(stack, mtopic)] == ["v1", "v2", "v3", "v2", "v1", "v3"]
    assert registry.reconcile() is False

    monkeypatch.setenv("CIFAKE_PG__DSN", registry.stack.pg.dsn.get_secret_value())
    assert retrainer_main(["models", "--topic", mtopic, "list"]) == 0
    table = capsys.readouterr().out
    assert "holdout_accuracy" in table and "0.5000" in table and "v-rejected" in table
    assert retrainer_main(["models", "--topic", mtopic, "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["version"]: r["status"] for r in rows}["v3"] == "champion"
    assert rows[0]["metrics"] == {"holdout_accuracy": 0.5, "base_val_accuracy": 0.6}
    assert retrainer_main(["models", "--topic", mtopic, "rollback", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert retrainer_main(["models", "--topic", mtopic, "show", "v1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "champion" and shown["events"][0]["event"] == "registered"
    assert retrainer_main(["models", "--topic", mtopic, "promote", "nope"]) == 1


def test_crash_between_register_and_announce_is_reconciled(
    registry: ModelRegistry,
    tmp_path: Path,
    stack: StackSettings,
    mtopic: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish(registry, make_weights(tmp_path / "a.safetensors", "a", 1), "v-a")

    def broker_down(_msg: ModelPublished) -> None:
        raise ConnectionError("simulated crash before the announcement")

    with monkeypatch.context() as m:
        m.setattr(registry.announcer, "announce", broker_down)
        with pytest.raises(ConnectionError):
            publish(registry, make_weights(tmp_path / "b.safetensors", "b", 2), "v-b")
    champion = registry.champion()
    assert champion is not None and champion.version == "v-b" and champion.announced_at is None
    assert [m.version for m in announcements(stack, mtopic)] == ["v-a"]
    assert registry.reconcile() is True  # what every retrainer process does at start
    assert [m.version for m in announcements(stack, mtopic)] == ["v-a", "v-b"]
    assert registry.reconcile() is False
