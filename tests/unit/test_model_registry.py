"""Every registered architecture: forward shape, finite output, Grad-CAM layer, final linear layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scorer.models import NUM_CLASSES, count_params, create_model, final_linear, gradcam_layer, list_models


def test_registry_has_the_required_families() -> None:
    names = list_models()
    for required in ("baseline", "vgg_small", "resnet_small", "fastnet"):
        assert required in names


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        create_model("no-such-net")


@pytest.mark.parametrize("name", list_models())
def test_forward_random_input(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (3, NUM_CLASSES)
    assert torch.isfinite(out).all()
    assert count_params(model) > 0


@pytest.mark.parametrize("name", list_models())
def test_train_mode_backward_and_channels_last(name: str) -> None:
    model = create_model(name).to(memory_format=torch.channels_last)
    model.train()
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list_models())
def test_gradcam_layer_gives_a_spatial_map_with_gradients(name: str) -> None:
    model = create_model(name).eval()
    layer = gradcam_layer(model)
    seen: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        out.retain_grad()
        seen["act"] = out

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(torch.randn(2, 3, 32, 32))
        logits[:, 1].sum().backward()
    finally:
        handle.remove()
    act = seen["act"]
    assert act.ndim == 4 and act.shape[0] == 2 and act.shape[-1] >= 4
    assert act.grad is not None and torch.isfinite(act.grad).all()


@pytest.mark.parametrize("name", list_models())
def test_final_linear_produces_the_logits(name: str) -> None:
    head = final_linear(create_model(name))
    assert head.out_features == NUM_CLASSES


def test_width_kwarg_changes_size() -> None:
    small = count_params(create_model("fastnet", width=16))
    large = count_params(create_model("fastnet", width=32))
    assert large > small


def test_fastnet_flip_tta_averages_the_image_and_its_mirror() -> None:
    import torch

    from scorer.models import create_model

    torch.manual_seed(0)
    plain = create_model("fastnet", width=8).eval()
    tta = create_model("fastnet", width=8, tta_flip=True).eval()
    tta.load_state_dict(plain.state_dict())  # same parameters: the option changes only the forward pass
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = (plain(x) + plain(x.flip(-1))) / 2
        got = tta(x)
    assert got.shape == (5, 2)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.equal(got, plain(x))  # it does change the output
