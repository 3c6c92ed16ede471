"""Class-activation maps (Grad-CAM and two higher-resolution variants), batched, on the model's device.

Contract of :meth:`CamExplainer.explain`: for uint8 NHWC images (or an already normalised NCHW tensor)
and one class index per image, it returns maps in ``[0, 1]`` at the model's input resolution, computed
exactly as the ``grad-cam`` package (pytorch-grad-cam) does for the same model, layer and target:

1. ``A`` = activations of the target layer (``scorer.models.gradcam_layer``), ``G`` = d logit[target] / dA;
2. per method: ``gradcam``  ``relu(sum_c mean_hw(G)_c * A_c)`` (Selvaraju et al. 2017),
   ``hirescam`` ``relu(sum_c G_c * A_c)`` (Draelos & Carin 2020: element-wise, provably faithful to
   the logit for a global-average-pooled head), ``layercam`` ``relu(sum_c relu(G_c) * A_c)`` (Jiang et al.
   2021);
3. min-max normalise each map at the layer's resolution, upsample bilinearly (half-pixel centres, as
   OpenCV's ``INTER_LINEAR``) to the input size, min-max normalise again. An all-zero map stays zero.

The hooks live only inside :func:`capture_activations`, a context manager that removes them on every exit
path, so an exception in the middle of a batch never leaves a hook (and the tensors it holds) behind.
Tensors stay on the device until the final ``.cpu()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from scorer.models import CLASS_NAMES, gradcam_layer
from scorer.preprocess import normalize_uint8

Method = Literal["gradcam", "hirescam", "layercam"]
METHODS: tuple[Method, ...] = ("gradcam", "hirescam", "layercam")
TargetSpec = Literal["fake", "real", "predicted"]
# Same epsilon as pytorch-grad-cam's scale_cam_image, so that normalised maps agree to float precision.
EPS = 1e-7


def _gradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return (weights * acts).sum(dim=1)


def _hirescam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return (grads * acts).sum(dim=1)


def _layercam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return (grads.clamp(min=0) * acts).sum(dim=1)


_COMBINE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": _gradcam,
    "hirescam": _hirescam,
    "layercam": _layercam,
}


class _Capture:
    """Holds the target layer's output of the last forward pass, as a leaf that gradients stop at."""

    def __init__(self) -> None:
        self.activations: torch.Tensor | None = None

    def hook(
        self, _module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor:
        # Cutting the graph here means the backward pass only runs through the layers after the target
        # layer (pooling and head), and, with frozen parameters, the forward pass up to here records
        # nothing for autograd. The clone keeps a later in-place op from touching the saved leaf.
        leaf = output.detach().requires_grad_(True)
        self.activations = leaf
        return leaf.clone()


@contextlib.contextmanager
def capture_activations(layer: nn.Module) -> Iterator[_Capture]:
    """A forward hook on ``layer`` for the duration of the block; removed on every exit path."""
    capture = _Capture()
    handle: RemovableHandle = layer.register_forward_hook(capture.hook)
    try:
        yield capture
    finally:
        handle.remove()
        capture.activations = None  # drop the graph with the hook, not at the next batch


def normalise_maps(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, h, w]`` non-negative maps -> ``[N, H, W]`` in [0, 1] (min-max, bilinear up, min-max)."""

    def minmax(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        lo = flat.min(dim=1).values.view(-1, 1, 1)
        x = x - lo
        hi = x.flatten(1).max(dim=1).values.view(-1, 1, 1)
        return x / (EPS + hi)

    x = minmax(cams)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return minmax(x)


def target_indices(spec: TargetSpec | int | Sequence[int], logits: torch.Tensor) -> torch.Tensor:
    """Class index per image: ``fake``/``real`` (fixed), ``predicted`` (argmax), an int or one per image."""
    n = logits.shape[0]
    if isinstance(spec, str):
        if spec == "predicted":
            return logits.argmax(dim=1)
        if spec not in CLASS_NAMES:
            raise ValueError(f"target must be one of {(*CLASS_NAMES, 'predicted')}, not {spec!r}")
        return torch.full((n,), CLASS_NAMES.index(spec), dtype=torch.long, device=logits.device)
    if isinstance(spec, int):
        return torch.full((n,), spec, dtype=torch.long, device=logits.device)
    idx = torch.as_tensor(list(spec), dtype=torch.long, device=logits.device)
    if idx.shape != (n,):
        raise ValueError(f"{len(idx)} targets for {n} images")
    return idx


@dataclass(frozen=True)
class CamResult:
    maps: np.ndarray  # float32 [N, H, W] in [0, 1]
    logits: np.ndarray  # float32 [N, 2]
    targets: np.ndarray  # int64 [N], the class each map explains

    @property
    def p_fake(self) -> np.ndarray:
        z = self.logits.astype(np.float64)
        return (1.0 / (1.0 + np.exp(-(z[:, 1] - z[:, 0])))).astype(np.float32)


class CamExplainer:
    """Explains a classifier with one CAM method at the layer its architecture names.

    ``freeze=True`` turns off ``requires_grad`` on the model's parameters: the explainer then owns the
    model (the service loads its own copy), and the forward pass up to the target layer costs what
    plain inference costs. The oracle tests pass ``freeze=False`` to share a model with pytorch-grad-cam.
    """

    def __init__(
        self,
        model: nn.Module,
        method: Method = "gradcam",
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        layer: nn.Module | None = None,
        freeze: bool = True,
    ) -> None:
        if method not in _COMBINE:
            raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(METHODS)}")
        self.model = model.eval()
        self.method: Method = method
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.layer = layer if layer is not None else gradcam_layer(model)
        self.layer_name = next((n for n, m in model.named_modules() if m is self.layer), "?")
        if freeze:
            model.requires_grad_(False)
        self.device = next(model.parameters()).device

    def explain(
        self, images: np.ndarray | torch.Tensor, target: TargetSpec | int | Sequence[int] = "fake"
    ) -> CamResult:
        """Maps for a batch: uint8 NHWC images (normalised here) or a float NCHW tensor (used as is)."""
        if isinstance(images, np.ndarray) or images.dtype == torch.uint8:
            x = normalize_uint8(images, self.mean, self.std)
        else:
            x = images
        x = x.to(self.device, non_blocking=True)
        if len(x) == 0:
            size = int(x.shape[-2]), int(x.shape[-1])
            return CamResult(
                np.zeros((0, *size), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
            )
        with torch.enable_grad(), capture_activations(self.layer) as cap:
            logits = self.model(x)
            acts = cap.activations
            if acts is None:
                raise RuntimeError(f"target layer {self.layer_name} did not run in the forward pass")
            idx = target_indices(target, logits.detach())
            score = logits.gather(1, idx[:, None]).sum()  # images are independent in eval mode
            (grads,) = torch.autograd.grad(score, acts)
            cams = _COMBINE[self.method](acts.detach(), grads)
            if len(cams) == 2 * len(x) and getattr(self.model, "tta_flip", False):
                # A flip-TTA model (scorer.models.FastNet) ran the image and its mirror as one batch: the map
                # of the whole decision is the mean of both branches, the mirrored one flipped back.
                cams = (cams[: len(x)] + cams[len(x) :].flip(-1)) / 2
            cams = cams.clamp(min=0)
        maps = normalise_maps(cams.float(), (int(x.shape[-2]), int(x.shape[-1])))
        return CamResult(
            maps.cpu().numpy().astype(np.float32, copy=False),
            logits.detach().float().cpu().numpy(),
            idx.cpu().numpy(),
        )


def hook_count(module: nn.Module) -> int:
    """Forward/backward hooks registered on ``module`` and its submodules (for leak checks)."""
    total = 0
    for m in module.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        total += len(getattr(m, "_backward_pre_hooks", {}))
    return total
