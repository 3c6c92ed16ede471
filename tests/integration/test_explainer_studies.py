"""The offline studies' logic on synthetic data (no CIFAKE needed), and the handler's failure paths with
in-memory fakes: model versions (LRU, registry, unknown), a database that is down."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from explainer.handler import ExplainerMetrics, ExplainHandler
from explainer.models import ModelCache
from explainer.sink import ExplanationRow, RegisteredModel
from harness.explainer_evidence import aggregate
from harness.explainer_faithfulness import area, faithfulness, unit_ranks
from ingest.contracts import Verdict, encode, utcnow
from ingest.decode import DecodeLimits
from ingest.errors import PermanentError, TransientError
from ingest.fetch import Fetcher
from ingest.loop import Batch, Record
from ingest.metrics import new_registry
from ingest.storage import ObjectInfo
from scorer.engine import ServingModel
from tests.scorer_helpers import jpeg, make_weights


def test_unit_ranks_group_patches_and_follow_the_scores() -> None:
    scores = np.zeros((1, 8, 8), np.float32)
    scores[0, 4:8, 0:4] = 1.0  # the bottom-left 4x4 patch is the most salient
    scores[0, 0:4, 0:4] = 0.5
    ranks = unit_ranks(scores, 4, np.random.default_rng(0))
    assert ranks.shape == (1, 1, 8, 8)
    assert (ranks[0, 0, 4:, :4] == 0).all() and (ranks[0, 0, :4, :4] == 1).all()
    assert set(ranks[0, 0].unique().tolist()) == {0, 1, 2, 3}
    px = unit_ranks(np.random.default_rng(1).random((2, 8, 8)), 1, np.random.default_rng(0))
    assert sorted(px[0].flatten().tolist()) == list(range(64))
    with pytest.raises(ValueError):
        unit_ranks(scores, 3, np.random.default_rng(0))


def test_area_is_the_mean_trapezoid() -> None:
    assert area(np.ones((3, 5))) == pytest.approx(1.0)
    assert area(np.array([[1.0, 0.0], [0.0, 0.0]])) == pytest.approx(0.25)


def test_faithfulness_report_shape_and_shared_endpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ServingModel.load(make_weights(tmp_path / "w.safetensors", "faith-v1", seed=4), "cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    donors = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    rep = faithfulness(
        model, images, ["gradcam"], steps=4, units=[8], baselines=["rise", "real"], donors=donors
    )
    assert set(rep["by_config"]) == {"8px/rise", "8px/real"}
    for cfg in rep["by_config"].values():
        assert cfg["fraction"] == [0.0, 0.25, 0.5, 0.75, 1.0]
        cam, rnd = cfg["curves"]["gradcam"], cfg["curves"]["random"]
        # Every order starts from the same image and ends at the same fill: only the path differs.
        for kind in ("deletion", "insertion"):
            assert cam[kind][0] == pytest.approx(rnd[kind][0], abs=1e-6)
            assert cam[kind][-1] == pytest.approx(rnd[kind][-1], abs=1e-6)
        assert 0.0 <= cfg["areas"]["gradcam"]["deletion"] <= 1.0
    with pytest.raises(ValueError):
        faithfulness(model, images, ["gradcam"], baselines=["real"])


def test_evidence_aggregate_shares_and_zero_maps() -> None:
    maps = np.zeros((4, 32, 32), np.float32)
    maps[0, 12:20, 12:20] = 1.0  # all in the centre
    maps[1, 0:2, :] = 1.0  # all on the border
    maps[2] = 1.0  # uniform
    labels = np.array([1, 1, 0, 0])
    rep = aggregate(maps, labels, np.array([0, 1, 0, 1]), ("airplane", "automobile"), np.array([1, 1, 0, 1]))
    assert rep["border_area_share"] == pytest.approx(0.4375)
    assert rep["by_class"]["fake"]["border_share_mean"] == pytest.approx(0.5)
    assert rep["by_category"]["fake"]["airplane"]["border_share_mean"] == pytest.approx(0.0)
    assert rep["by_category"]["fake"]["automobile"]["border_share_mean"] == pytest.approx(1.0)
    assert rep["by_class"]["real"]["n_zero_maps"] == 1
    assert rep["by_class"]["real"]["border_share_mean"] == pytest.approx(0.4375)
    assert rep["accuracy"] == pytest.approx(0.75)


# -- the handler with in-memory adapters ------------------------------------------------------------


class MemoryStore:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def put(self, bucket: str, key: str, data: bytes, content_type: str = "") -> ObjectInfo:
        self.objects[(bucket, key)] = data
        return ObjectInfo(bucket, key, len(data), "", content_type)

    def get(self, bucket: str, key: str, max_bytes: int) -> bytes:
        if (bucket, key) not in self.objects:
            raise PermanentError(f"object s3://{bucket}/{key} does not exist")
        return self.objects[(bucket, key)]

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        return ObjectInfo(bucket, key, len(self.get(bucket, key, 1 << 30)), "", None)


class MemorySink:
    def __init__(self, refs: dict[str, str | None], models: dict[str, RegisteredModel]) -> None:
        self.refs, self.models = refs, models
        self.rows: list[ExplanationRow] = []
        self.down = False

    def image_refs(self, image_ids: list[str]) -> dict[str, str | None]:
        if self.down:
            raise TransientError("PostgreSQL unavailable")
        return {i: self.refs[i] for i in image_ids if i in self.refs}

    def registered_model(self, version: str) -> RegisteredModel | None:
        return self.models.get(version)

    def write(self, rows: list[ExplanationRow]) -> None:
        self.rows.extend(rows)

    def close(self) -> None:
        pass


def _record(offset: int, v: Verdict) -> Record:
    return Record("images.verdicts", 0, offset, v.image_id.encode(), encode(v))


def _verdict(image_id: str, version: str, label: str = "fake") -> Verdict:
    now = utcnow()
    return Verdict(
        image_id=image_id,
        model_version=version,
        p_fake=0.9,
        label=label,  # type: ignore[arg-type]
        threshold=0.5,
        submitted_at=now,
        scored_at=now,
    )


def test_handler_versions_lru_unknown_and_database_down(tmp_path: Path) -> None:
    store = MemoryStore()
    current = ServingModel.load(make_weights(tmp_path / "a.safetensors", "va", seed=1), "cpu")
    other_path = make_weights(tmp_path / "b.safetensors", "vb", seed=2)
    store.put("models", "b.safetensors", other_path.read_bytes())
    good_sha = hashlib.sha256(other_path.read_bytes()).hexdigest()
    store.put("models", "c.safetensors", other_path.read_bytes())
    registry = {
        "vb": RegisteredModel("vb", "b.safetensors", good_sha),
        "vc": RegisteredModel("vc", "c.safetensors", "0" * 64),  # the bytes do not match the registry
    }
    store.put("images", "img", jpeg(7))
    refs = {"i1": "s3://images/img", "i2": "s3://images/img", "i3": None, "i4": "ftp://elsewhere/x"}
    sink = MemorySink(refs, registry)
    loads: list[str] = []

    def loader(version: str) -> ServingModel:
        from explainer.models import load_registered

        loads.append(version)
        return load_registered(sink, store, version, "cpu")

    cache = ModelCache(current, ["gradcam"], loader, capacity=1)
    metrics_registry = new_registry()
    handler = ExplainHandler(
        fetcher=Fetcher(store),
        limits=DecodeLimits(),
        sink=sink,
        store=store,
        models=cache,
        next_model=lambda: None,
        metrics=ExplainerMetrics.create(metrics_registry),
    )
    try:
        verdicts = [
            _verdict("i1", "va"),
            _verdict("i2", "vb"),
            _verdict("i1", "vb"),
            _verdict("i2", "vc"),
            _verdict("i2", "vz"),
            _verdict("i3", "va"),
            _verdict("i1", "va", "real"),
            _verdict("i4", "va"),
        ]
        batch = Batch([_record(o, v) for o, v in enumerate(verdicts)])
        handler(batch)
        codes = {f.record.offset: f.code for f in batch.failures.values()}
        assert codes == {
            3: "model_sha256_mismatch",
            4: "unknown_model_version",
            5: "no_image_ref",
            7: "invalid_ref",
        }
        assert sorted((r.image_id, r.model_version) for r in sink.rows) == [
            ("i1", "va"),
            ("i1", "vb"),
            ("i2", "vb"),
        ]
        assert loads == ["vb", "vc", "vz"]  # vb loaded once for two verdicts
        sample = metrics_registry.get_sample_value
        assert sample("explainer_explanations_total", {"method": "gradcam", "model_version": "vb"}) == 2
        assert sample("explainer_skipped_total", {"label": "real"}) == 1
        assert sample("explainer_model_loads_total", {"outcome": "unknown_model_version"}) == 1
        assert len(batch.outputs) == 3 and len(store.objects) == 2 + 1 + 9  # 2 weights, 1 image, 9 artefacts
        handler(Batch([_record(10, _verdict("i2", "vb"))]))
        assert loads == ["vb", "vc", "vz"]  # still cached (capacity 1)

        sink.down = True
        with pytest.raises(TransientError):  # the loop retries the batch and commits nothing
            handler(Batch([_record(11, _verdict("i1", "va"))]))
    finally:
        handler.close()


def test_model_cache_swap_keeps_the_previous_version_for_late_verdicts(tmp_path: Path) -> None:
    a = ServingModel.load(make_weights(tmp_path / "a.safetensors", "va", seed=1), "cpu")
    b = ServingModel.load(make_weights(tmp_path / "b.safetensors", "vb", seed=2), "cpu")
    c = ServingModel.load(make_weights(tmp_path / "c.safetensors", "vc", seed=3), "cpu")
    loads: list[str] = []

    def loader(version: str) -> ServingModel:
        loads.append(version)
        raise PermanentError(f"unknown {version}", "unknown_model_version")

    cache = ModelCache(a, ["gradcam", "layercam"], loader, capacity=1)
    cache.swap(b)  # a models.published announcement, taken between batches
    assert cache.current.version == "vb" and cache.get("va").version == "va" and loads == []
    assert set(cache.get("vb").by_method) == {"gradcam", "layercam"}
    cache.swap(c)  # capacity 1: vb stays, va is evicted
    assert cache.cached_versions == ["vc", "vb"]
    with pytest.raises(PermanentError):
        cache.get("va")
    assert loads == ["va"]
