"""The serving model: a loaded weights file plus the inference path the scorer runs per batch.

``ServingModel`` is immutable; a hot swap replaces the whole object between batches, so a batch is
always scored by exactly one model version, the one recorded in its verdicts.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from scorer.infer import memory_format, pick_device
from scorer.preprocess import normalize_uint8
from scorer.weights import ModelMeta, load_weights, resolve_weights

logger = logging.getLogger(__name__)

Label = Literal["real", "fake", "uncertain"]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ServingModel:
    model: nn.Module
    meta: ModelMeta
    version: str
    sha256: str
    device: torch.device

    @classmethod
    def load(
        cls, spec: str | Path, device: torch.device | str = "auto", version: str | None = None
    ) -> ServingModel:
        """Load ``spec`` ("default" or a path). The version is the one in the metadata unless given.

        A file without a version in its metadata is named after its content hash, so two different
        unnamed files can never be confused in the verdicts table.
        """
        dev = pick_device(device) if isinstance(device, str) else device
        path = resolve_weights(str(spec))
        digest = file_sha256(path)
        model, meta = load_weights(path, device=dev)
        model = model.to(memory_format=memory_format(dev))
        name = version or meta.version or f"sha-{digest[:12]}"
        logger.info(
            "loaded model %s (%s, threshold %.3f) from %s on %s", name, meta.arch, meta.threshold, path, dev
        )
        return cls(model, meta, name, digest, dev)

    @property
    def input_size(self) -> int:
        return int(self.meta.input_size)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """p_fake (float32 ``[N]``) for uint8 NHWC ``images`` of the model's input size."""
        if len(images) == 0:
            return np.zeros((0,), np.float32)
        x = normalize_uint8(images, self.meta.mean, self.meta.std)
        with torch.inference_mode():
            if self.device.type == "cuda":
                # Pinned host memory lets the copy overlap; fp16 autocast halves the arithmetic.
                x = x.pin_memory().to(self.device, non_blocking=True)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16):
                    logits = self.model(x)
            else:
                logits = self.model(x.contiguous(memory_format=torch.channels_last))
            p = torch.softmax(logits.float(), dim=1)[:, 1]
        return p.cpu().numpy().astype(np.float32)


def label_for(p_fake: float, threshold: float, band: float) -> Label:
    """``uncertain`` within ``band`` of the threshold (either side), else ``fake``/``real``."""
    if abs(p_fake - threshold) < band:
        return "uncertain"
    return "fake" if p_fake >= threshold else "real"
