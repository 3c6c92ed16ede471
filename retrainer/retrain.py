"""One retraining run: fine-tune the champion on moderators' labels, evaluate, gate, publish.

1. Snapshot the majority labels (``feedback_majority``; ties left out) and the newest ``received_at``.
2. Fetch the labelled images through ``ingest.fetch.Fetcher`` and decode them exactly as the scorer does
   (``ingest.decode``). Split them by image into train and hold-out with a keyed hash of the image id, so an
   image is in the hold-out in every run and never trained on.
3. Fine-tune the champion's weights (``retrainer.train``: same optimizer, augmentation and step) for a fixed
   budget on batches mixing feedback images with a seeded replay sample of the base training data, which
   keeps the base task from being forgotten.
4. Evaluate candidate and champion on the same sets: base validation (the split the champion was selected
   on, subsampled with the seed) and the feedback hold-out, each at its own threshold.
5. Gate (``gate``) and publish through the registry as champion (announced) or rejected (with the reasons).

Nothing is uploaded before training and evaluation finish, so a crash or a stop request during them publishes
nothing; the registry's order (upload, verify, register, announce) covers the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ingest.contracts import ImageSubmitted, utcnow
from ingest.db import transaction
from ingest.decode import decode_image, to_rgb_array
from ingest.fetch import Fetcher
from ingest.settings import StackSettings
from retrainer.augment import jpeg_bank
from retrainer.data import CifakeSplit, dedup_index, load_split, split_train_val
from retrainer.feedback import MajorityLabels, majority_labels
from retrainer.metrics import auroc, ece
from retrainer.perturb import PERTURBATIONS
from retrainer.registry import ModelRecord, ModelRegistry, Trigger
from retrainer.settings import GateSettings, RetrainerSettings, TrainBudget
from retrainer.train import ThreadTuner, TrainConfig, augment_batch, lr_at, make_optimizer, train_step
from scorer.drift import META_KEY, reference_histogram
from scorer.infer import p_fake_from_logits, predict_logits
from scorer.weights import ModelMeta, load_weights, save_weights

logger = logging.getLogger(__name__)

JPEG_P = 0.25  # as the base training's default


class Abandoned(Exception):
    """A stop was requested during training; nothing was published."""


@dataclass
class FeedbackImages:
    ids: list[str]
    images: np.ndarray  # uint8 [N, 32, 32, 3]
    labels: np.ndarray  # int64 [N]
    unavailable: int = 0  # labelled images whose bytes could not be fetched or decoded


@dataclass
class RetrainOutcome:
    record: ModelRecord | None
    accepted: bool
    reasons: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)


def in_holdout(image_id: str, fraction: float, seed: int) -> bool:
    """Stable per image: the same image is in the hold-out in every run with this seed and fraction."""
    h = hashlib.sha256(f"holdout:{seed}:{image_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def gate(metrics: dict[str, Any], settings: GateSettings) -> tuple[bool, list[str]]:
    """Champion iff hold-out gain >= delta and base-validation drop <= epsilon; otherwise the reasons."""
    reasons: list[str] = []
    if metrics["n_holdout"] < settings.min_holdout:
        reasons.append(
            f"hold-out has {metrics['n_holdout']} images, fewer than min_holdout {settings.min_holdout}"
        )
    gain, drop = metrics["holdout_gain"], metrics["base_val_drop"]
    if gain is None:
        reasons.append("no hold-out images: no evidence of improvement")
        gain = 0.0
    elif gain < settings.delta:
        reasons.append(f"hold-out accuracy gain {gain:+.4f} is below delta {settings.delta:+.4f}")
    if drop > settings.epsilon:
        reasons.append(f"base validation accuracy drop {drop:+.4f} exceeds epsilon {settings.epsilon:.4f}")
    if reasons:
        return False, reasons
    passed = f"gate passed: hold-out gain {gain:+.4f} >= {settings.delta:+.4f}"
    return True, [f"{passed}, base drop {drop:+.4f} <= {settings.epsilon:.4f}"]


def labels_cutoff(stack: StackSettings) -> datetime | None:
    """The newest ``received_at``: labels after it count towards the next run's trigger."""
    with transaction(stack.pg) as cur:
        cur.execute("SELECT max(received_at) FROM feedback")
        row = cur.fetchone()
    return row[0] if row else None


def fetch_feedback_images(
    stack: StackSettings, settings: RetrainerSettings, labels: dict[str, int], fetcher: Fetcher
) -> FeedbackImages:
    """Fetch and decode every labelled image (scorer's decoding rules, 32x32 RGB)."""
    with transaction(stack.pg) as cur:
        cur.execute("SELECT id, ref FROM images WHERE id = ANY(%s) ORDER BY id", (sorted(labels),))
        refs = [(i, r) for i, r in cur.fetchall()]
    ids: list[str] = []
    arrays: list[np.ndarray] = []
    unavailable = len(labels) - len(refs)
    msgs, kept = [], []
    for image_id, ref in refs:
        try:
            msgs.append(ImageSubmitted(image_id=image_id, ref=ref, submitted_at=utcnow(), source="retrainer"))
            kept.append(image_id)
        except ValueError:  # no stored reference (an inline image that was not persisted)
            unavailable += 1
    for image_id, data in zip(kept, fetcher.fetch_many(msgs), strict=True):
        try:
            if isinstance(data, BaseException):
                raise data
            arrays.append(to_rgb_array(decode_image(data, settings.limits, target_size=32), 32))
            ids.append(image_id)
        except Exception as e:  # one lost image must not stop the run; it is counted
            logger.warning("feedback image %s unavailable: %s: %s", image_id, type(e).__name__, e)
            unavailable += 1
    images = np.stack(arrays) if arrays else np.zeros((0, 32, 32, 3), np.uint8)
    return FeedbackImages(ids, images, np.array([labels[i] for i in ids], np.int64), unavailable)


def base_sets(
    data: str, meta: ModelMeta, budget: TrainBudget, categories: list[int] | None = None
) -> tuple[CifakeSplit, CifakeSplit]:
    """(replay sample of base train, base validation subsample), both seeded; val is the champion's split,
    both restricted to ``categories`` when given."""
    if not data:
        raise ValueError(
            "no base training data configured: set CIFAKE_RETRAINER_BASE_DATA (or --data) to the CIFAKE "
            "archive, a zip or a folder with train/REAL and train/FAKE"
        )
    ds = load_split(data, "train")
    if meta.data_fingerprint and meta.data_fingerprint != ds.fingerprint:
        logger.warning(
            "base data %s (fingerprint %s) is not the champion's training data (%s): base validation may "
            "overlap images the champion was trained on",
            data,
            ds.fingerprint,
            meta.data_fingerprint,
        )
    train_idx, val_idx = split_train_val(
        ds, float(meta.split.get("val_fraction", 0.1)), int(meta.split.get("seed", 0))
    )
    train_idx = np.intersect1d(train_idx, dedup_index(ds.hashes))
    if categories is not None:
        train_idx = train_idx[np.isin(ds.categories[train_idx], categories)]
        val_idx = val_idx[np.isin(ds.categories[val_idx], categories)]
    rng = np.random.default_rng(budget.seed)
    replay = rng.choice(train_idx, size=min(budget.replay, len(train_idx)), replace=False)
    val = rng.choice(val_idx, size=min(budget.base_val_max, len(val_idx)), replace=False)
    return ds.subset(np.sort(replay)), ds.subset(np.sort(val))


def accuracy(model: nn.Module, meta: ModelMeta, images: np.ndarray, labels: np.ndarray) -> float | None:
    """Accuracy at the model's own threshold; None for an empty set."""
    if len(images) == 0:
        return None
    p = p_fake_from_logits(predict_logits(model, images, meta.mean, meta.std, device=torch.device("cpu")))
    return float(((p >= meta.threshold).astype(np.int64) == labels).mean())


def validation_summary(model: nn.Module, meta: ModelMeta, val: CifakeSplit) -> dict[str, Any]:
    """AUROC, ECE and the p_fake histogram of ``model`` on base validation (one forward pass). The histogram
    travels in the weights as the scorers' drift reference; all three show on the console's Models page."""
    p = p_fake_from_logits(predict_logits(model, val.images, meta.mean, meta.std, device=torch.device("cpu")))
    return {
        "base_val_auroc": auroc(val.labels, p),
        "base_val_ece": ece(val.labels, p),
        META_KEY: reference_histogram(p),
    }


def robustness(
    candidate: nn.Module, champion: nn.Module, meta: ModelMeta, val: CifakeSplit
) -> dict[str, Any]:
    """Base-validation accuracy of both models under each perturbation (the robustness battery)."""
    out: dict[str, Any] = {}
    for name, perturb in PERTURBATIONS.items():
        images = perturb(val.images)
        out[f"robust_{name}_accuracy"] = accuracy(candidate, meta, images, val.labels)
        out[f"champion_robust_{name}_accuracy"] = accuracy(champion, meta, images, val.labels)
    return out


def fine_tune(
    model: nn.Module,
    fb_images: np.ndarray,
    fb_labels: np.ndarray,
    replay: CifakeSplit,
    budget: TrainBudget,
    stop: threading.Event | None = None,
) -> nn.Module:
    """``budget.steps`` SGD steps on batches of feedback (share ``feedback_share``) and replay images."""
    device = torch.device("cpu")
    torch.manual_seed(budget.seed)
    gen = torch.Generator().manual_seed(budget.seed)
    pool_x = np.concatenate([fb_images, replay.images])
    pool_y = np.concatenate([fb_labels, replay.labels])
    images = torch.from_numpy(pool_x)
    bank = torch.from_numpy(jpeg_bank(pool_x, 40, 90, budget.seed))
    labels = torch.from_numpy(pool_y)
    n_fb, n_replay = len(fb_images), len(replay)
    k_fb = max(1, round(budget.batch_size * budget.feedback_share)) if n_fb else 0
    k_replay = budget.batch_size - k_fb if n_replay else 0
    cfg = TrainConfig(data="", lr=budget.lr, warmup=0.05)  # only for the shared LR schedule
    opt = make_optimizer(model, budget.lr, 0.9, budget.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.to(device).train()
    # As in base training: on a shared machine 1 thread can beat all of them by far, so measure.
    max_threads = budget.threads or (os.cpu_count() or 1)
    tuner = ThreadTuner(max_threads) if not budget.threads else None
    if budget.threads:  # a fixed count is honoured here too, not only by callers that set it first
        torch.set_num_threads(budget.threads)
    for step in range(budget.steps):
        if stop is not None and stop.is_set():
            raise Abandoned(f"stopped at step {step}/{budget.steps}")
        if tuner is not None:
            tuner.on_step(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step / budget.steps, cfg)
        parts = []
        if k_fb:
            parts.append(torch.randint(0, n_fb, (k_fb,), generator=gen))
        if k_replay:
            parts.append(n_fb + torch.randint(0, n_replay, (k_replay,), generator=gen))
        idx = torch.cat(parts)
        x = augment_batch(images[idx], bank[idx], JPEG_P, budget.shift, gen)
        loss = train_step(model, opt, loss_fn, x, labels[idx], device)
        if (step + 1) % 100 == 0:
            logger.info("fine-tune step %d/%d: loss %.4f", step + 1, budget.steps, float(loss.detach()))
    return model.eval()


def interpolate(tuned: nn.Module, base: nn.Module, alpha: float) -> nn.Module:
    """``alpha * tuned + (1 - alpha) * base`` for every floating-point tensor (BatchNorm statistics too)."""
    base_sd = base.state_dict()
    mixed = {
        k: torch.lerp(base_sd[k].float(), v.float(), alpha).to(v.dtype) if v.dtype.is_floating_point else v
        for k, v in tuned.state_dict().items()
    }
    tuned.load_state_dict(mixed)
    return tuned.eval()


def _fingerprint(pairs: list[tuple[str, int]]) -> str:
    h = hashlib.sha256()
    for image_id, label in sorted(pairs):
        h.update(f"{image_id}|{label}\n".encode())
    return h.hexdigest()[:16]


def compare(
    candidate: nn.Module,
    champion: nn.Module,
    meta: ModelMeta,
    fb: FeedbackImages,
    hold: np.ndarray,
    base_val: CifakeSplit,
    with_robustness: bool,
) -> dict[str, Any]:
    """Both models on the same sets, each at the (shared) threshold; gain and drop as the gate reads them."""
    t_eval = time.monotonic()
    m: dict[str, Any] = {
        "holdout_accuracy": accuracy(candidate, meta, fb.images[hold], fb.labels[hold]),
        "base_val_accuracy": accuracy(candidate, meta, base_val.images, base_val.labels),
        "champion_holdout_accuracy": accuracy(champion, meta, fb.images[hold], fb.labels[hold]),
        "champion_base_val_accuracy": accuracy(champion, meta, base_val.images, base_val.labels),
        "n_holdout": int(hold.sum()),
        "n_feedback_train": int((~hold).sum()),
        "n_base_val": len(base_val),
    }
    if with_robustness:
        m |= robustness(candidate, champion, meta, base_val)
    gain = None
    if m["holdout_accuracy"] is not None and m["champion_holdout_accuracy"] is not None:
        gain = m["holdout_accuracy"] - m["champion_holdout_accuracy"]
    m["holdout_gain"] = gain
    m["base_val_drop"] = m["champion_base_val_accuracy"] - m["base_val_accuracy"]
    m["eval_seconds"] = round(time.monotonic() - t_eval, 2)
    return m


def describe_data(
    majority: MajorityLabels,
    fb: FeedbackImages,
    hold: np.ndarray,
    cutoff: datetime | None,
    replay: CifakeSplit,
    base_val: CifakeSplit,
    base_data: str,
) -> dict[str, Any]:
    """What the version was trained and evaluated on (the registry's ``data`` column)."""
    return {
        "feedback": {
            "labels": len(majority.labels),
            "ties_left_out": majority.ties,
            "agreement": majority.agreement,
            "images_used": len(fb.ids),
            "unavailable": fb.unavailable,
            "train": int((~hold).sum()),
            "holdout": int(hold.sum()),
            "fingerprint": _fingerprint([(i, int(y)) for i, y in zip(fb.ids, fb.labels, strict=True)]),
            "cutoff": cutoff.isoformat() if cutoff else None,
        },
        "base": {
            "fingerprint": replay.fingerprint,
            "replay": len(replay),
            "val": len(base_val),
            "source": Path(base_data).name,
        },
    }


def retrain_once(
    stack: StackSettings,
    settings: RetrainerSettings,
    registry: ModelRegistry,
    fetcher: Fetcher,
    trigger: Trigger,
    stop: threading.Event | None = None,
) -> RetrainOutcome:
    """One complete run: the registered candidate (champion or rejected), or no record when skipped."""
    started = time.monotonic()
    budget = settings.budget
    if budget.threads:
        torch.set_num_threads(budget.threads)
    champion = registry.champion()
    if champion is None:
        return RetrainOutcome(None, False, ["no champion to fine-tune from"])
    cutoff = labels_cutoff(stack)
    majority: MajorityLabels = majority_labels(stack.pg)
    t_fetch = time.monotonic()
    fb = fetch_feedback_images(stack, settings, majority.labels, fetcher)
    fetch_seconds = time.monotonic() - t_fetch
    hold = np.array([in_holdout(i, budget.holdout_fraction, budget.seed) for i in fb.ids], bool)
    if not (~hold).any():
        return RetrainOutcome(None, False, ["no labelled feedback images to train on"])
    with tempfile.TemporaryDirectory(prefix="cifake-retrain-") as tmp:
        parent_path = Path(tmp) / "parent.safetensors"
        parent_path.write_bytes(registry.fetch_weights(champion))
        champ_model, meta = load_weights(parent_path)
        replay, base_val = base_sets(settings.base_data, meta, budget, settings.base_categories)
        t_train = time.monotonic()
        candidate = fine_tune(
            copy.deepcopy(champ_model), fb.images[~hold], fb.labels[~hold], replay, budget, stop
        )
        train_seconds = time.monotonic() - t_train
        if budget.interpolate < 1.0:
            candidate = interpolate(candidate, champ_model, budget.interpolate)
        metrics = compare(candidate, champ_model, meta, fb, hold, base_val, settings.robustness) | {
            **validation_summary(candidate, meta, base_val),
            "n_replay": len(replay),
            "steps": budget.steps,
            "train_seconds": round(train_seconds, 2),
            "fetch_seconds": round(fetch_seconds, 2),
        }
        accepted, reasons = gate(metrics, settings.gate)
        version = f"ft-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        out_meta = dataclasses.replace(
            meta,
            version=version,
            parent_version=champion.version,
            metrics=metrics,
            train_config={
                "budget": budget.model_dump(),
                "gate": settings.gate.model_dump(),
                "trigger": trigger,
            },
        )
        path = save_weights(Path(tmp) / "candidate.safetensors", candidate, out_meta)
        data_info = describe_data(majority, fb, hold, cutoff, replay, base_val, settings.base_data)
        record = registry.publish(
            path.read_bytes(),
            version=version,
            parent=champion.version,
            status="champion" if accepted else "rejected",
            trigger=trigger,
            metrics=metrics,
            data_info=data_info,
            reasons=reasons,
        )
    logger.info(
        "retrain %s (%s) in %.1fs: %s; %s",
        version,
        trigger,
        time.monotonic() - started,
        record.status,
        "; ".join(reasons),
    )
    return RetrainOutcome(record, accepted, reasons, metrics)
