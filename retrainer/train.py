"""Train a detector on CIFAKE: seeded, resumable, EMA weights, temperature and threshold fit on validation.

Outputs in ``--out``: ``checkpoint.safetensors`` (resume state, every epoch), ``best.safetensors`` (best EMA
weights so far), ``model.safetensors`` (final: best weights, temperature folded into the head, threshold in
the metadata), ``history.jsonl`` (one line per epoch). Every file is written atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retrainer.augment import jpeg_bank, random_flip_translate
from retrainer.checkpoint import load_checkpoint, save_checkpoint
from retrainer.data import CifakeSplit, dedup_index, load_split, split_report, split_train_val
from retrainer.distill import soft_targets, teacher_p_fake
from retrainer.metrics import auroc, best_threshold, ece, fit_temperature, nll
from scorer.drift import META_KEY, reference_histogram
from scorer.infer import memory_format, p_fake_from_logits, pick_device, predict_logits
from scorer.models import FastNet, count_params, create_model, final_linear
from scorer.preprocess import DEFAULT_MEAN, DEFAULT_STD, normalize_uint8
from scorer.weights import ModelMeta, load_weights, save_weights

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str
    arch: str = "fastnet"
    width: int | None = None
    out: str = "runs/train"
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup: float = 0.03
    ema: float = 0.999
    jpeg_p: float = 0.25
    jpeg_q_min: int = 40
    jpeg_q_max: int = 90
    shift: int = 2
    val_fraction: float = 0.1
    # Share of the validation split held out for the final report (retrainer.data.split_report): never
    # used for early stopping, temperature or threshold. 0: the whole validation split tunes (v1-v3).
    report_fraction: float = 0.0
    seed: int = 0
    max_train: int | None = None
    max_steps: int | None = None
    time_budget: float | None = None
    patience: int = 0
    threads: int = 0
    device: str = "auto"
    resume: bool = False
    # Finalise with flip test-time augmentation (FastNet only): training is unchanged; the saved model
    # averages each image with its mirror, and temperature and threshold are fitted on that output.
    tta_flip: bool = False
    init: str | None = None
    version: str | None = None
    progress: bool = True
    # Knowledge distillation (retrainer.distill): the teachers' weights files and the weight of their
    # probabilities in each training target; no teachers, plain labels.
    teachers: list[str] = dataclasses.field(default_factory=list)
    distill: float = 0.5


@dataclass
class TrainResult:
    weights: Path
    meta: ModelMeta
    history: list[dict[str, Any]]
    wall_s: float


class ThreadTuner:
    """Re-picks the torch thread count (1 or ``max_threads``) every ``period`` steps from live step times.

    On a shared 2-core machine, 2 threads lose badly as soon as another process takes a core (the OpenMP
    threads wait on each other: 1 thread measured 2x faster then), while on an idle machine 2 threads
    win. Probing costs nothing extra: the probe steps are real training steps.
    """

    def __init__(self, max_threads: int, period: int = 100, probe: int = 8) -> None:
        self.max_threads, self.period, self.probe = max_threads, period, probe
        self.t0 = 0.0
        self.rate_one = 0.0

    def on_step(self, step: int) -> None:
        if self.max_threads <= 1:
            return
        phase = step % self.period
        now = time.perf_counter()
        if phase == 0:
            torch.set_num_threads(1)
            self.t0 = now
        elif phase == self.probe:
            self.rate_one = self.probe / (now - self.t0)
            torch.set_num_threads(self.max_threads)
            self.t0 = now
        elif phase == 2 * self.probe:
            rate_max = self.probe / (now - self.t0)
            best = 1 if self.rate_one > rate_max else self.max_threads
            torch.set_num_threads(best)
            logger.debug("threads: 1 -> %.1f steps/s, %d -> %.1f; using %d", self.rate_one, self.max_threads,
                         rate_max, best)  # fmt: skip


def lr_at(progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to zero, as a function of training progress in [0, 1]."""
    if progress < cfg.warmup:
        return cfg.lr * progress / cfg.warmup
    t = (progress - cfg.warmup) / max(1e-9, 1.0 - cfg.warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _subsample(idx: np.ndarray, ds: CifakeSplit, n: int, seed: int) -> np.ndarray:
    """Random subset of ``idx`` of size ``n`` with the label x category proportions kept."""
    rng = np.random.default_rng(seed + 7)
    strata = ds.labels[idx] * 10 + ds.categories[idx]
    keep: list[np.ndarray] = []
    for s in np.unique(strata):
        members = idx[strata == s]
        k = max(1, round(len(members) * n / len(idx)))
        keep.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def _ema_update(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].lerp_(v, 1.0 - decay)
            else:
                ema[k].copy_(v)


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum; no weight decay on BatchNorm parameters and biases.

    Shared with fine-tuning (``retrainer.retrain``), so both train the same way.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)  # no weight decay on BN and biases
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=momentum,
        nesterov=True,
    )


def augment_batch(
    xb: torch.Tensor, jpeg_xb: torch.Tensor | None, jpeg_p: float, shift: int, gen: torch.Generator
) -> torch.Tensor:
    """uint8 NHWC batch -> normalised float NCHW batch, augmented as in training: each sample replaced by its
    JPEG re-encoded copy (``jpeg_xb``, same order) with probability ``jpeg_p``, then flip and translate."""
    if jpeg_xb is not None:
        use_jpeg = torch.rand(len(xb), generator=gen) < jpeg_p
        xb = torch.where(use_jpeg.view(-1, 1, 1, 1), jpeg_xb, xb)
    return random_flip_translate(normalize_uint8(xb, DEFAULT_MEAN, DEFAULT_STD), shift, gen)


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    use_amp: bool = False,
) -> torch.Tensor:
    """One optimizer step on a prepared batch (``augment_batch``); returns the (detached-able) loss."""
    x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format(device))
    y = y.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        loss: torch.Tensor = loss_fn(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _evaluate(
    model: nn.Module, val: CifakeSplit, device: torch.device
) -> tuple[dict[str, float], np.ndarray]:
    logits = predict_logits(model, val.images, DEFAULT_MEAN, DEFAULT_STD, device=device)
    p = p_fake_from_logits(logits)
    acc = float(((p >= 0.5).astype(np.int64) == val.labels).mean())
    return {
        "val_accuracy": acc,
        "val_auroc": auroc(val.labels, p),
        "val_nll": nll(val.labels, p),
        "val_ece": ece(val.labels, p),
    }, logits


def split_meta(val_fraction: float, seed: int, report_fraction: float) -> dict[str, float | int]:
    """The metadata that reproduces the split; ``report_fraction`` only when there is a report part, so
    that files written before it existed read the same."""
    out: dict[str, float | int] = {"val_fraction": val_fraction, "seed": seed}
    if report_fraction > 0:
        out["report_fraction"] = report_fraction
    return out


def prepare_data(cfg: TrainConfig) -> tuple[CifakeSplit, CifakeSplit, CifakeSplit]:
    """(all, train, val): train is de-duplicated (duplicates only re-weight), val keeps every copy."""
    ds = load_split(cfg.data, "train")
    train_idx, val_idx = split_train_val(ds, cfg.val_fraction, cfg.seed)
    if cfg.report_fraction > 0:
        val_idx, report_idx = split_report(ds, val_idx, cfg.report_fraction, cfg.seed)
        logger.info("%d validation images held out for the final report", len(report_idx))
    train_idx = np.intersect1d(train_idx, dedup_index(ds.hashes))
    if cfg.max_train is not None and cfg.max_train < len(train_idx):
        train_idx = _subsample(train_idx, ds, cfg.max_train, cfg.seed)
    logger.info("train %d images (deduplicated), validation %d", len(train_idx), len(val_idx))
    return ds, ds.subset(train_idx), ds.subset(val_idx)


def _build_model(cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any], str | None]:
    parent: str | None = None
    if cfg.init:
        model, init_meta = load_weights(cfg.init)
        if init_meta.arch != cfg.arch:
            raise ValueError(f"--init weights are {init_meta.arch!r}, not --arch {cfg.arch!r}")
        return model, init_meta.arch_kwargs, init_meta.version or None
    kw: dict[str, Any] = {} if cfg.width is None else {"width": cfg.width}
    return create_model(cfg.arch, **kw), kw, parent


def train(cfg: TrainConfig) -> TrainResult:
    t_start = time.perf_counter()
    max_threads = cfg.threads if cfg.threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(max_threads)
    tuner = ThreadTuner(max_threads) if cfg.threads <= 0 else None
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ds, tr, val = prepare_data(cfg)

    model, arch_kwargs, parent = _build_model(cfg)
    mf = memory_format(device)
    model = model.to(device).to(memory_format=mf)
    logger.info("%s %s: %d parameters on %s", cfg.arch, arch_kwargs, count_params(model), device)
    opt = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    eval_model = copy.deepcopy(model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    t0 = time.perf_counter()
    bank = jpeg_bank(tr.images, cfg.jpeg_q_min, cfg.jpeg_q_max, cfg.seed) if cfg.jpeg_p > 0 else None
    logger.info("JPEG augmentation bank: %.1fs", time.perf_counter() - t0)
    images = torch.from_numpy(tr.images)
    bank_t = torch.from_numpy(bank) if bank is not None else None
    labels = torch.from_numpy(tr.labels)
    p_teacher = torch.from_numpy(teacher_p_fake(cfg.teachers, tr.images, device)) if cfg.teachers else None

    steps_per_epoch = len(tr) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    state: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "elapsed": 0.0,
        "best_acc": -1.0,
        "best_epoch": -1,
        "history": [],
        "config": dataclasses.asdict(cfg),
    }
    ckpt = out / "checkpoint.safetensors"
    if cfg.resume and ckpt.exists():
        state = load_checkpoint(ckpt, model, ema, opt)
        logger.info("resumed from %s at epoch %d step %d", ckpt, state["epoch"], state["step"])
    use_amp = device.type == "cuda"
    stop = False
    while not stop and state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(len(tr), generator=gen)
        model.train()
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress)
        loss_sum, n_seen = 0.0, 0
        # Only time spent in training steps counts towards the budget, not validation or checkpoints.
        epoch_start, elapsed_before = time.perf_counter(), state["elapsed"]
        lr = 0.0
        for b in range(steps_per_epoch):
            elapsed = elapsed_before + time.perf_counter() - epoch_start
            progress = state["step"] / total_steps
            if cfg.time_budget:
                progress = max(progress, elapsed / cfg.time_budget)
            if progress >= 1.0:
                stop = True
                break
            if tuner is not None:
                tuner.on_step(state["step"])
            lr = lr_at(progress, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x = augment_batch(
                images[idx], bank_t[idx] if bank_t is not None else None, cfg.jpeg_p, cfg.shift, gen
            )
            y = labels[idx] if p_teacher is None else soft_targets(labels[idx], p_teacher[idx], cfg.distill)
            loss = train_step(model, opt, loss_fn, x, y, device, use_amp)
            state["step"] += 1
            if cfg.ema > 0:
                _ema_update(ema, model, min(cfg.ema, (1 + state["step"]) / (10 + state["step"])))
            loss_sum += float(loss.detach()) * len(idx)
            n_seen += len(idx)
            if bar is not None:
                bar.update(1)
                if b % 20 == 0:
                    bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}", lr=f"{lr:.4f}")
        if bar is not None:
            bar.close()
        state["epoch"] = epoch + 1
        state["elapsed"] = elapsed_before + time.perf_counter() - epoch_start
        eval_model.load_state_dict(ema if cfg.ema > 0 else model.state_dict())
        row, _ = _evaluate(eval_model, val, device)
        row.update(
            epoch=epoch + 1,
            step=state["step"],
            train_loss=loss_sum / max(1, n_seen),
            elapsed_s=round(state["elapsed"], 1),
            lr=lr,  # the rate actually used last (the schedule may follow the clock, not steps)
        )
        state["history"].append(row)
        logger.info("epoch %d: %s", epoch + 1, json.dumps({k: round(v, 5) for k, v in row.items()}))
        with (out / "history.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        if row["val_accuracy"] > state["best_acc"]:
            state["best_acc"], state["best_epoch"] = row["val_accuracy"], epoch + 1
            meta = ModelMeta(arch=cfg.arch, arch_kwargs=arch_kwargs, data_fingerprint=ds.fingerprint)
            save_weights(out / "best.safetensors", eval_model, meta)
        save_checkpoint(ckpt, model, ema, opt, state)
        if cfg.patience and epoch + 1 - state["best_epoch"] >= cfg.patience:
            logger.info("early stop: no val improvement for %d epochs", cfg.patience)
            stop = True
        if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
            stop = True
    return _finalize(cfg, out, ds, val, arch_kwargs, parent, state, device, time.perf_counter() - t_start)


def _finalize(
    cfg: TrainConfig,
    out: Path,
    ds: CifakeSplit,
    val: CifakeSplit,
    arch_kwargs: dict[str, Any],
    parent: str | None,
    state: dict[str, Any],
    device: torch.device,
    wall_s: float,
) -> TrainResult:
    """Best EMA weights -> fold the validation temperature into the head, pick the threshold, save."""
    model, _ = load_weights(out / "best.safetensors", device=device)
    if cfg.tta_flip:
        if not isinstance(model, FastNet):
            raise ValueError(f"--tta-flip needs an architecture with a tta_flip option, not {cfg.arch!r}")
        model.tta_flip = True
        arch_kwargs = {**arch_kwargs, "tta_flip": True}
    logits = predict_logits(model, val.images, DEFAULT_MEAN, DEFAULT_STD, device=device)
    temperature = fit_temperature(logits, val.labels)
    head = final_linear(model)
    with torch.no_grad():
        # Calibrated logits in the file itself, so every consumer's softmax is already calibrated.
        head.weight.div_(temperature)
        head.bias.div_(temperature)
    p = p_fake_from_logits(logits / temperature)
    threshold = best_threshold(val.labels, p)
    metrics = {
        "val_accuracy": float(((p >= threshold).astype(np.int64) == val.labels).mean()),
        "val_accuracy_at_0.5": float(((p >= 0.5).astype(np.int64) == val.labels).mean()),
        "val_auroc": auroc(val.labels, p),
        "val_ece": ece(val.labels, p),
        "val_nll": nll(val.labels, p),
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "steps": state["step"],
        "train_wall_s": round(state["elapsed"], 1),
        # The scorers' drift reference (scorer/drift.py): live p_fake is compared with this histogram.
        META_KEY: reference_histogram(p),
    }
    version = cfg.version or f"{cfg.arch}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    meta = ModelMeta(
        arch=cfg.arch,
        arch_kwargs=arch_kwargs,
        threshold=threshold,
        temperature=temperature,
        data_fingerprint=ds.fingerprint,
        split=split_meta(cfg.val_fraction, cfg.seed, cfg.report_fraction),
        metrics=metrics,
        train_config={k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"},
        version=version,
        parent_version=parent,
    )
    path = save_weights(out / "model.safetensors", model, meta)
    logger.info("saved %s: %s", path, json.dumps(metrics))
    return TrainResult(path, meta, state["history"], wall_s)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", mininterval=5.0, leave=False)
