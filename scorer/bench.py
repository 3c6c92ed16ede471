"""Model throughput (images/s) on random input, without decoding.

``bench_model`` times a PyTorch module on float input (the GPU check's precisions); ``bench_serving``
times ``ServingModel.predict`` on uint8 images, i.e. what the scorer runs (normalisation included, on the
runtime it chose). Figures are wall-clock and depend on the machine and its load; tests never assert on
them.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from scorer.infer import memory_format
from scorer.models import count_params

if TYPE_CHECKING:
    # Only for the annotation: the GPU check imports this module where ONNX Runtime may be missing.
    from scorer.engine import ServingModel

logger = logging.getLogger(__name__)


def images_per_second(
    model: nn.Module,
    batch_size: int,
    device: torch.device,
    input_size: int = 32,
    min_time: float = 1.0,
    warmup: int = 3,
) -> float:
    """Forward passes at ``batch_size`` for at least ``min_time`` seconds, after ``warmup`` untimed ones."""
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    x = x.contiguous(memory_format=memory_format(device))
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        _sync(device)
        n, t0 = 0, time.perf_counter()
        while True:
            model(x)
            n += 1
            if n >= 3:
                _sync(device)
                elapsed = time.perf_counter() - t0
                if elapsed >= min_time:
                    return n * batch_size / elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(
    model: nn.Module,
    device: torch.device,
    input_size: int = 32,
    batch_sizes: tuple[int, ...] = (1, 32, 256),
    min_time: float = 1.0,
) -> dict[str, Any]:
    """``{"batch<N>_images_per_s": ..., "device": ..., "params": ...}`` for each batch size."""
    model = model.to(device).to(memory_format=memory_format(device))
    out: dict[str, Any] = {}
    for bs in batch_sizes:
        out[f"batch{bs}_images_per_s"] = round(images_per_second(model, bs, device, input_size, min_time), 1)
        logger.info("batch %d: %.1f images/s", bs, out[f"batch{bs}_images_per_s"])
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    out["device"] = name
    out["params"] = count_params(model)
    return out


def bench_serving(
    model: ServingModel, batch_sizes: tuple[int, ...] = (1, 32, 256), min_time: float = 1.0, warmup: int = 3
) -> dict[str, Any]:
    """``bench_model``'s result for ``model.predict`` on random uint8 images, plus the runtime."""
    size = model.input_size
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for bs in batch_sizes:
        images = rng.integers(0, 256, (bs, size, size, 3), dtype=np.uint8)
        for _ in range(warmup):
            model.predict(images)
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < min_time:
            model.predict(images)  # returns host numpy: CUDA work is finished when it returns
            n += 1
        out[f"batch{bs}_images_per_s"] = round(n * bs / (time.perf_counter() - t0), 1)
        logger.info("batch %d: %.1f images/s", bs, out[f"batch{bs}_images_per_s"])
    threads = model.runner.threads if model.runner is not None else torch.get_num_threads()
    out["device"] = (
        torch.cuda.get_device_name(model.device)
        if model.device.type == "cuda"
        else f"cpu ({threads} threads)"
    )
    out["runtime"] = model.runtime
    out["params"] = count_params(model.model)
    return out
