"""Registry of the CIFAKE detector architectures.

Every model maps a normalised ``[B, 3, H, W]`` float tensor to two logits ``[real, fake]``;
``p_fake = softmax(logits, dim=1)[:, 1]``. Each model names the layer Grad-CAM should use in its
``cam_layer_name`` attribute (a dotted submodule path, resolved by :func:`gradcam_layer`), so that
the explainer never has to know the architecture.

The generator's traces are high-frequency, so the fast models keep the first convolution at full
resolution and only downsample after it; see ``benchmarks/sweep/`` for the accuracy/speed trade-off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

NUM_CLASSES = 2
CLASS_NAMES = ("real", "fake")

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Add a factory to the registry under ``name`` (decorator)."""

    def deco(fn: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, **kw: Any) -> nn.Module:
    """Build an untrained model by registry name; ``kw`` go to the factory (e.g. ``width``)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None
    model = factory(**kw)
    model.arch_name = name  # type: ignore[assignment]
    return model


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The module whose activations/gradients Grad-CAM should use (last spatial feature map)."""
    name = getattr(model, "cam_layer_name", None)
    if not isinstance(name, str):
        raise TypeError(f"{type(model).__name__} does not declare cam_layer_name")
    return model.get_submodule(name)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def final_linear(model: nn.Module) -> nn.Linear:
    """The layer that produces the two logits (the last ``nn.Linear``); temperature is folded into it."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None or last.out_features != NUM_CLASSES:
        raise TypeError(f"{type(model).__name__} has no final Linear layer with {NUM_CLASSES} outputs")
    return last


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Classifier(nn.Module):
    """features -> global average pool -> linear; the common shape of every model but the baseline."""

    cam_layer_name = "features"

    def __init__(self, features: nn.Module, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.dropout(x))


class BaselineCNN(nn.Module):
    """The CIFAKE paper's best small CNN (Bird & Lotfi 2024): two 32-filter conv + 2x2 max-pool layers,
    dense 64, no BatchNorm. Kept as the reference point of the sweep."""

    cam_layer_name = "features.4"

    def __init__(self, filters: int = 32, dense: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, filters, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(filters, filters, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(filters * 8 * 8, dense),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(dense, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


@register("baseline")
def baseline(**kw: Any) -> nn.Module:
    return BaselineCNN(**kw)


@register("vgg_small")
def vgg_small(width: int = 32, dropout: float = 0.1) -> nn.Module:
    """VGG-style: (conv-bn-relu)x2 per stage, max-pool between stages, widths w, 2w, 4w."""
    w = width
    features = nn.Sequential(
        conv_bn(3, w),
        conv_bn(w, w),
        nn.MaxPool2d(2),
        conv_bn(w, 2 * w),
        conv_bn(2 * w, 2 * w),
        nn.MaxPool2d(2),
        conv_bn(2 * w, 4 * w),
        conv_bn(4 * w, 4 * w),
    )
    return _Classifier(features, 4 * w, dropout)


class BasicBlock(nn.Module):
    """Pre-addition ResNet basic block (He et al. 2016) with a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, stride=stride)
        self.conv2 = conv_bn(c_out, c_out, act=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = conv_bn(c_in, c_out, k=1, stride=stride, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


def _resnet(widths: tuple[int, ...], depths: tuple[int, ...], stem: int, dropout: float) -> nn.Module:
    layers: list[nn.Module] = [conv_bn(3, stem)]
    c = stem
    for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
        for j in range(d):
            layers.append(BasicBlock(c, w, stride=2 if (j == 0 and i > 0) else 1))
            c = w
    return _Classifier(nn.Sequential(*layers), c, dropout)


@register("resnet_small")
def resnet_small(width: int = 16, depth: int = 3, dropout: float = 0.0) -> nn.Module:
    """CIFAR ResNet (ResNet-20 at the defaults): 3 stages at 32, 16, 8 px, widths w, 2w, 4w."""
    return _resnet((width, 2 * width, 4 * width), (depth, depth, depth), width, dropout)


class FastBlock(nn.Module):
    """conv -> max-pool -> BN -> ReLU -> conv -> BN -> ReLU, the block of the fast CIFAR-10 speedrun nets.

    Pooling right after the first conv of a block quarters the cost of the second conv; the full-resolution
    conv still sees every pixel of the generator's high-frequency traces before any downsampling.
    """

    def __init__(self, c_in: int, c_out: int, pool: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return self.act(self.bn2(self.conv2(x)))


class FastNet(nn.Module):
    """Small, wide-early CNN tuned for CPU throughput: stem at full resolution, three pooled blocks.

    At 32 px input the feature maps are 32 (stem) -> 16 -> 8 -> 4. Grad-CAM uses the last block's 4x4 map,
    the one the decision is made from; an explainer wanting a finer (less faithful) map can point
    ``cam_layer_name`` at ``"block2"`` (8x8) on the instance.
    """

    cam_layer_name = "block3"

    def __init__(
        self,
        widths: tuple[int, int, int, int] = (24, 32, 64, 128),
        dropout: float = 0.0,
        tta_flip: bool = False,
    ) -> None:
        super().__init__()
        # Test-time augmentation baked into the architecture, so every consumer (scorer, evaluate, explainer,
        # retrainer) gets the same function: the image and its mirror go through the trunk as one batch of 2N
        # and their pooled features are averaged (the head is linear, so this averages the logits too).
        self.tta_flip = tta_flip
        s, w1, w2, w3 = widths
        self.stem = conv_bn(3, s)
        self.block1 = FastBlock(s, w1)
        self.block2 = FastBlock(w1, w2)
        self.block3 = FastBlock(w2, w3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(w3, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tta_flip:
            x = torch.cat([x, x.flip(-1)])
        x = self.block3(self.block2(self.block1(self.stem(x))))
        pooled = torch.flatten(self.pool(x), 1)
        if self.tta_flip:
            # A reshape rather than slicing at len(x): an exported graph (scorer/runtime.py) keeps the
            # batch size symbolic instead of baking in the one it was traced with.
            pooled = pooled.unflatten(0, (2, -1)).mean(0)
        return self.head(self.dropout(pooled))


@register("fastnet")
def fastnet(
    width: int = 32, stem: int | None = None, dropout: float = 0.0, tta_flip: bool = False
) -> nn.Module:
    """FastNet with widths (stem, w, 2w, 4w); ``width`` scales the whole net."""
    # Channel counts are kept at multiples of 8: oneDNN's AVX2 kernels block channels by 8, and an odd
    # count (18) measured ~3x slower on the 2-core CPU than the next multiple.
    s = stem if stem is not None else max(16, 8 * round(3 * width / 32))
    return FastNet((s, width, 2 * width, 4 * width), dropout, tta_flip)


@register("fastnet_s")
def fastnet_s(**kw: Any) -> nn.Module:
    """FastNet at half width: the speed end of the front."""
    kw.setdefault("width", 16)
    return fastnet(**kw)


@register("fastnet_l")
def fastnet_l(**kw: Any) -> nn.Module:
    """FastNet at 1.5x width: the accuracy end of the front."""
    kw.setdefault("width", 48)
    return fastnet(**kw)
