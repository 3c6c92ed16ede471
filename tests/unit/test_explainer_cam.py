"""Grad-CAM correctness against the grad-cam package (the oracle), targets, and hook release."""

from __future__ import annotations

import copy
import gc
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explainer.cam import CamExplainer, Method, capture_activations, hook_count, normalise_maps
from scorer.models import create_model, gradcam_layer

TOL = 1e-4


def _model(arch: str, seed: int, **kw: int) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(arch, **kw)
    model.train()
    with torch.no_grad():  # give BatchNorm real statistics, as in tests/scorer_helpers.make_weights
        model(torch.randn(64, 3, 32, 32))
    return model.eval()


ORACLE_CASES = [
    ("baseline", {}, 0),
    ("vgg_small", {"width": 8}, 0),
    ("resnet_small", {"width": 8, "depth": 1}, 0),
    ("fastnet", {"width": 16}, 0),
]


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
@pytest.mark.parametrize(("arch", "kw", "seed"), ORACLE_CASES)
def test_maps_match_pytorch_grad_cam(method: Method, arch: str, kw: dict[str, int], seed: int) -> None:
    # The oracle is a pinned dev dependency (pyproject [dev], deploy/requirements.lock): a missing package
    # fails here rather than skipping the only independent check of the maps.
    import pytorch_grad_cam as oracle
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    oracle_cls = {"gradcam": oracle.GradCAM, "hirescam": oracle.HiResCAM, "layercam": oracle.LayerCAM}[method]
    model = _model(arch, seed, **kw)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    targets = [0, 1, 1, 0, 1, 0]  # a class index per image, mixed within one batch
    ref_model = copy.deepcopy(model)
    with oracle_cls(model=ref_model, target_layers=[gradcam_layer(ref_model)]) as cam:
        expected = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    ours = CamExplainer(model, method).explain(x, targets)
    assert ours.maps.shape == expected.shape == (6, 32, 32)
    assert ours.targets.tolist() == targets
    # The comparison only means something when the maps are not all zero.
    assert (ours.maps.max(axis=(1, 2)) > 0.99).sum() >= 3
    assert float(np.abs(ours.maps - expected).max()) <= TOL


def test_targets_fake_real_predicted() -> None:
    model = _model("baseline", 0)
    x = torch.randn(8, 3, 32, 32)
    ex = CamExplainer(model, "gradcam")
    fake, real, pred = ex.explain(x, "fake"), ex.explain(x, "real"), ex.explain(x, "predicted")
    assert fake.targets.tolist() == [1] * 8 and real.targets.tolist() == [0] * 8
    assert pred.targets.tolist() == fake.logits.argmax(axis=1).tolist()
    for i, t in enumerate(pred.targets):
        assert np.array_equal(pred.maps[i], (fake if t == 1 else real).maps[i])
    assert np.allclose(fake.p_fake, torch.softmax(model(x), 1)[:, 1].detach().numpy(), atol=1e-6)
    with pytest.raises(ValueError):
        ex.explain(x, "dog")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ex.explain(x, [0, 1])


def test_uint8_input_is_normalised_like_the_scorer() -> None:
    model = _model("baseline", 0)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    imgs = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    ex = CamExplainer(model, "gradcam", mean, std)
    x = (
        torch.as_tensor(imgs).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)
    ) / torch.tensor(std).view(1, 3, 1, 1)
    assert np.allclose(ex.explain(imgs).maps, ex.explain(x).maps, atol=1e-5)


def test_normalise_maps_range_and_flat_maps() -> None:
    cams = torch.rand(3, 4, 4)
    cams[1] = 0.0  # no positive evidence: stays all zero, no NaN
    out = normalise_maps(cams, (32, 32))
    assert out.shape == (3, 32, 32)
    assert torch.isfinite(out).all()
    assert float(out[1].abs().max()) == 0.0
    for i in (0, 2):
        assert float(out[i].min()) == pytest.approx(0.0, abs=1e-6)
        assert float(out[i].max()) == pytest.approx(1.0, abs=1e-6)


def test_frozen_explainer_leaves_the_model_usable_for_inference() -> None:
    model = _model("baseline", 0)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        before = model(x)
    CamExplainer(model, "hirescam").explain(x, "fake")
    with torch.inference_mode():
        assert torch.equal(model(x), before)
    assert not any(p.requires_grad for p in model.parameters())


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc for RSS")
def test_hooks_released_and_memory_flat_over_2000_explanations() -> None:
    # A deliberately small model keeps 2,000 explanations to a second or two on a busy CPU.
    model = _model("baseline", 0, filters=8, dense=16)
    layer = gradcam_layer(model)
    ex = CamExplainer(model, "gradcam")
    x = torch.randn(10, 3, 32, 32)
    hooks_before = hook_count(model)
    for _ in range(20):  # warm-up: allocator pools and lazy inits settle
        ex.explain(x, "fake")
    tensors_before, rss_before = _live_tensors(), _rss_bytes()
    failures = 0
    for i in range(200):  # 200 batches x 10 images = 2,000 explanations
        if i % 50 == 0:
            # A failure inside the hooked region must still remove the hook.
            with pytest.raises(ValueError):
                ex.explain(x, [0, 1, 2])
            failures += 1
        result = ex.explain(x, "fake" if i % 2 else "real")
        assert result.maps.shape == (10, 32, 32)
        assert hook_count(model) == hooks_before
    assert failures == 4
    assert len(layer._forward_hooks) == 0
    assert _live_tensors() <= tensors_before + 5
    assert _rss_bytes() - rss_before < 64 * 2**20


def test_capture_context_removes_its_hook_on_error() -> None:
    model = _model("baseline", 0)
    layer = gradcam_layer(model)
    with pytest.raises(RuntimeError), capture_activations(layer) as cap:
        model(torch.randn(1, 3, 32, 32))
        assert cap.activations is not None
        raise RuntimeError("boom")
    assert len(layer._forward_hooks) == 0
    assert cap.activations is None


def test_flip_tta_model_gets_one_map_per_image_symmetric_for_a_symmetric_image() -> None:
    import torch

    from explainer.cam import CamExplainer
    from scorer.models import create_model

    torch.manual_seed(0)
    model = create_model("fastnet", width=8, tta_flip=True).eval()
    half = torch.randn(2, 3, 32, 16)
    x = torch.cat([half, half.flip(-1)], dim=-1)  # mirror-symmetric images
    result = CamExplainer(model, "gradcam").explain(x, target=1)
    assert result.maps.shape == (2, 32, 32) and result.logits.shape == (2, 2)
    # Both branches see the same picture mirrored, so the folded map must be mirror-symmetric too.
    np.testing.assert_allclose(result.maps, result.maps[:, :, ::-1], atol=1e-4)
