"""Batched raw inference shared by the bench, the evaluator and training validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from scorer.preprocess import normalize_uint8


def pick_device(spec: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def memory_format(device: torch.device) -> torch.memory_format:
    # channels_last lets oneDNN (CPU) and cuDNN pick their fastest NHWC convolution kernels.
    return torch.channels_last


def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> np.ndarray:
    """Logits ``[N, 2]`` (float32 numpy) for uint8 NHWC ``images``; the model is put in eval mode."""
    dev = device or next(model.parameters()).device
    model.eval()
    out = np.zeros((len(images), 2), np.float32)
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = normalize_uint8(images[i : i + batch_size], mean, std)
            x = x.to(dev, non_blocking=True).contiguous(memory_format=memory_format(dev))
            out[i : i + batch_size] = model(x).float().cpu().numpy()
    return out


def p_fake_from_logits(logits: np.ndarray) -> np.ndarray:
    """softmax(logits)[:, 1], computed stably from the logit difference."""
    z = np.asarray(logits, np.float64)
    return 1.0 / (1.0 + np.exp(-(z[:, 1] - z[:, 0])))
