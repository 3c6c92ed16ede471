"""Self-describing weights: safetensors tensors + a JSON metadata block in the safetensors header.

Loading goes through ``safetensors`` only, so a weights file can never run code (no pickle). The metadata
carries everything needed to use the weights: architecture and its kwargs, input size, normalisation,
decision threshold, the training data fingerprint, metrics and lineage (version, parent_version).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from scorer.models import create_model
from scorer.preprocess import DEFAULT_MEAN, DEFAULT_STD, RESIZE_METHOD

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "assets" / "default.safetensors"
META_KEY = "cifake_meta"
FORMAT_VERSION = 1


@dataclass
class ModelMeta:
    """Everything a consumer needs to run a weights file, stored next to the tensors."""

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 32
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    resize: str = RESIZE_METHOD
    # p_fake >= threshold means "fake"; chosen on the validation split.
    threshold: float = 0.5
    # Temperature already folded into the head (logits are calibrated as stored); kept for the record.
    temperature: float = 1.0
    class_names: tuple[str, str] = ("real", "fake")
    data_fingerprint: str = ""
    split: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    parent_version: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("model metadata is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            # Newer writers may add fields; an older reader keeps working and says what it ignored.
            logger.warning("ignoring unknown metadata fields: %s", ", ".join(unknown))
        kw = {k: v for k, v in raw.items() if k in known}
        for k in ("mean", "std", "class_names"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


def save_weights(path: str | os.PathLike[str], model: nn.Module, meta: ModelMeta) -> Path:
    """Write ``model``'s state dict and ``meta`` to ``path`` atomically (temp file + ``os.replace``)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={META_KEY: meta.to_json(), "format": "pt"})
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; weights are read by other users/containers
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """Only the metadata of a weights file (reads the header, not the tensors)."""
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if META_KEY not in header:
        raise ValueError(f"{path}: no {META_KEY!r} metadata; not a cifake-screen weights file")
    return ModelMeta.from_json(header[META_KEY])


def resolve_weights(spec: str | os.PathLike[str] | None) -> Path:
    """``"default"`` or ``None`` -> the shipped model; anything else is a path that must exist."""
    if spec is None or str(spec) == "default":
        return DEFAULT_WEIGHTS
    p = Path(spec).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    return p


def load_weights(
    path: str | os.PathLike[str] | None = "default", device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelMeta]:
    """Build the model named in the metadata, load its tensors strictly, return it in eval mode."""
    p = resolve_weights(path)
    meta = read_meta(p)
    model = create_model(meta.arch, **meta.arch_kwargs)
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(p), framework="pt", device="cpu") as f:
        for k in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
            tensors[k] = f.get_tensor(k)
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    return model, meta
