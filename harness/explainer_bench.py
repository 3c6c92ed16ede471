"""Explanation throughput against the bare model's in the same run (random input; wall-clock figures).

``explanations_per_s``: Grad-CAM maps at batch 64, from a normalised batch on the device to ``[0, 1]``
maps at input resolution in host memory (forward with the hook, backward to the target layer, combine,
normalise, upsample). ``raw_images_per_s``: the scorer's inference path (``inference_mode`` forward) at
the same batch size. ``render_per_s`` (PNG map + overlay + sidecar, one thread) is reported separately: the
service renders on its I/O pool, next to the object writes, not on the model's path. Tests never assert on
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
    model: ServingModel,
    method: Method = "gradcam",
    batch_size: int = 64,
    min_time: float = 2.0,
    rounds: int = 3,
) -> dict[str, Any]:
    """Raw and explanation throughput measured alternately ``rounds`` times; medians are reported, so a
    machine whose load drifts (a training run next door) biases neither side."""
    size = model.input_size
    ex = CamExplainer(model.model, method, model.meta.mean, model.meta.std)
    raw_runs, ex_runs = [], []
    for _ in range(rounds):
        raw_runs.append(images_per_second(model.model, batch_size, model.device, size, min_time))
        ex_runs.append(explanations_per_second(ex, batch_size, size, min_time))
    raw, per_s = float(np.median(raw_runs)), float(np.median(ex_runs))
    b1 = explanations_per_second(ex, 1, size, min_time)
    device = (
        torch.cuda.get_device_name(model.device)
        if model.device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    return {
        "method": method,
        "model_version": model.version,
        "arch": model.meta.arch,
        "batch_size": batch_size,
        "explanations_per_s": round(per_s, 1),
        "batch1_explanations_per_s": round(b1, 1),
        "raw_images_per_s": round(raw, 1),
        "ratio": round(per_s / raw, 3),
        "rounds": {"raw": [round(r, 1) for r in raw_runs], "explain": [round(r, 1) for r in ex_runs]},
        "render_per_s": round(renders_per_second(size, min_time / 2), 1),
        "device": device,
    }
