"""Explanation throughput against the bare model's in the same run (random input; wall-clock figures).

``explanations_per_s``: Grad-CAM maps at batch 64, from a normalised batch on the device to ``[0, 1]``
maps at input resolution in host memory (forward with the hook, backward to the target layer, combine,
normalise, upsample). ``raw_images_per_s``: the scorer's inference path (``inference_mode`` forward) at
the same batch size. ``render_per_s`` (PNG map + overlay + sidecar, CPU) is reported separately because it
is the part that scales with the number of I/O workers rather than with the model. Tests never assert on
these numbers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from explainer.cam import CamExplainer, Method
from explainer.render import render
from scorer.bench import images_per_second
from scorer.engine import ServingModel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def explanations_per_second(ex: CamExplainer, batch_size: int, input_size: int, min_time: float) -> float:
    x = torch.randn(batch_size, 3, input_size, input_size, device=ex.device)
    x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        ex.explain(x, "fake")
    _sync(ex.device)
    n, t0 = 0, time.perf_counter()
    while True:
        ex.explain(x, "fake")  # ends with the maps copied to host memory: synchronised
        n += 1
        elapsed = time.perf_counter() - t0
        if n >= 3 and elapsed >= min_time:
            return n * batch_size / elapsed


def renders_per_second(input_size: int, min_time: float) -> float:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (input_size, input_size, 3), dtype=np.uint8)
    m = rng.random((input_size, input_size)).astype(np.float32)
    n, t0 = 0, time.perf_counter()
    while True:
        render(image, m, method="gradcam", layer="x", target="fake", model_version="v", p_fake=0.5)
        n += 1
        elapsed = time.perf_counter() - t0
        if n >= 10 and elapsed >= min_time:
            return n / elapsed


def bench(
    model: ServingModel, method: Method = "gradcam", batch_size: int = 64, min_time: float = 2.0
) -> dict[str, Any]:
    size = model.input_size
    # Raw first, on the unfrozen model, exactly as the scorer serves it.
    raw = images_per_second(model.model, batch_size, model.device, size, min_time)
    ex = CamExplainer(model.model, method, model.meta.mean, model.meta.std)
    per_s = explanations_per_second(ex, batch_size, size, min_time)
    b1 = explanations_per_second(ex, 1, size, min_time)
    raw_again = images_per_second(model.model, batch_size, model.device, size, min_time)
    device = (
        torch.cuda.get_device_name(model.device)
        if model.device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    raw_mean = (raw + raw_again) / 2  # bracketing the explanation runs evens out a drifting machine load
    return {
        "method": method,
        "model_version": model.version,
        "arch": model.meta.arch,
        "batch_size": batch_size,
        "explanations_per_s": round(per_s, 1),
        "batch1_explanations_per_s": round(b1, 1),
        "raw_images_per_s": round(raw_mean, 1),
        "raw_images_per_s_before_after": [round(raw, 1), round(raw_again, 1)],
        "ratio": round(per_s / raw_mean, 3),
        "render_per_s": round(renders_per_second(size, min_time / 2), 1),
        "device": device,
    }
