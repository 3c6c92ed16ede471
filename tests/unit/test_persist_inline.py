"""Which inline images the scorer stores (``CIFAKE_SCORER_PERSIST_INLINE``): all, only the flagged ones, or
none; the image row's reference says which, and a failed PUT writes no verdict."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingest.errors import TransientError
from scorer.engine import ServingModel
from scorer.handler import PersistInline
from scorer.service import ScorerSettings
from tests.fetch_helpers import MemoryStore
from tests.scorer_helpers import MemorySink, inline_batch, make_weights, memory_handler


class _Brightness(ServingModel):
    """p_fake = mean brightness: bright images are fake, dark ones real, whatever order they arrive in."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).mean(axis=1).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ServingModel:
    path: Path = tmp_path_factory.mktemp("persist") / "m.safetensors"
    loaded = ServingModel.load(make_weights(path, "v-persist", seed=1), "cpu", runtime="torch")
    meta = dataclasses.replace(loaded.meta, threshold=0.5)
    return _Brightness(loaded.model, meta, loaded.version, loaded.sha256, loaded.device)


def _flat_jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _run(
    model: ServingModel,
    policy: PersistInline,
    store: MemoryStore,
    images: list[bytes],
    sink: MemorySink | None = None,
) -> MemorySink:
    sink = sink if sink is not None else MemorySink()
    handler = memory_handler(model, store, sink=sink, uncertain_band=0.0, persist_inline=policy, signals=None)
    try:
        handler(inline_batch(images, "inl"))
    finally:
        handler.close()
    return sink


IMAGES = [_flat_jpeg(v) for v in (10, 240, 30, 250, 220, 5)]  # real, fake, real, fake, fake, real


@pytest.mark.parametrize(
    ("policy", "stored_ids"),
    [
        ("all", {"inl-0", "inl-1", "inl-2", "inl-3", "inl-4", "inl-5"}),
        ("flagged", {"inl-1", "inl-3", "inl-4"}),
        ("none", set()),
    ],
)
def test_policy_decides_what_is_stored(
    model: ServingModel, policy: PersistInline, stored_ids: set[str]
) -> None:
    store = MemoryStore()
    sink = _run(model, policy, store, IMAGES)
    labels = {v.image_id: v.label for v in sink.verdicts}
    assert [labels[f"inl-{i}"] for i in range(6)] == ["real", "fake", "real", "fake", "fake", "real"]
    rows = {r.id: r for r in sink.images}
    assert {i for i, r in rows.items() if r.ref is not None} == stored_ids
    digests = {hashlib.sha256(IMAGES[int(i.split("-")[1])]).hexdigest() for i in stored_ids}
    assert {key for _, key in store.objects} == digests
    for i in stored_ids:
        assert rows[i].ref == f"s3://images/{rows[i].sha256}"


def test_failed_put_writes_no_verdict(model: ServingModel) -> None:
    class Failing(MemoryStore):
        def put(self, bucket: str, key: str, data: bytes, content_type: str = "") -> object:  # type: ignore[override]
            raise TransientError("object store unavailable")

    sink = MemorySink()
    with pytest.raises(TransientError):
        _run(model, "flagged", Failing(), IMAGES, sink)
    assert sink.verdicts == [] and sink.images == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", "all"),
        ("false", "none"),
        ("flagged", "flagged"),
        ("all", "all"),
        (True, "all"),
        (False, "none"),
    ],
)
def test_setting_accepts_the_old_booleans(value: object, expected: str) -> None:
    assert ScorerSettings(persist_inline=value).persist_inline == expected  # type: ignore[arg-type]


def test_setting_refuses_anything_else() -> None:
    with pytest.raises(ValueError, match="persist_inline"):
        ScorerSettings(persist_inline="some")  # type: ignore[arg-type]
