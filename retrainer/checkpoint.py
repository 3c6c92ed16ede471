"""Resume checkpoints: model, EMA and optimizer tensors in safetensors, progress in its JSON metadata.

Like the shipped weights, checkpoints are never unpickled. SGD's only state is the momentum buffer per
parameter, which is stored as ``opt.<index>``; the data order is re-derived from (seed, epoch), so no RNG
state needs saving.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn


def save_checkpoint(
    path: Path,
    model: nn.Module,
    ema: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    for k, v in ema.items():
        tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"opt.{i}"] = buf.detach().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"state": json.dumps(state)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(
    path: Path, model: nn.Module, ema: dict[str, torch.Tensor], opt: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore tensors in place; returns the saved progress state."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = list(f.keys())
        state: dict[str, Any] = json.loads((f.metadata() or {})["state"])
        model_sd = {k[6:]: f.get_tensor(k) for k in keys if k.startswith("model.")}
        model.load_state_dict(model_sd, strict=True)
        for k in ema:
            ema[k].copy_(f.get_tensor(f"ema.{k}"))
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            if f"opt.{i}" in keys:
                opt.state[p]["momentum_buffer"] = f.get_tensor(f"opt.{i}").to(p.device)
    return state
