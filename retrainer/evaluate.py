"""Evaluate a weights file on the validation split (re-derived from its metadata) or the official test split.

Writes ``report.json`` (lower-case keys: accuracy, precision, recall, f1, auroc, average_precision, ece,
accuracy_per_category, accuracy_dedup, counts, ...), the figures and a self-contained ``report.html``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrainer.data import (
    CATEGORIES,
    CifakeSplit,
    dedup_index,
    load_split,
    split_report,
    split_train_val,
)
from retrainer.metrics import binary_metrics, pr_curve, reliability, roc_curve
from retrainer.perturb import PERTURBATIONS
from scorer.infer import p_fake_from_logits, pick_device, predict_logits
from scorer.models import count_params
from scorer.weights import ModelMeta, load_weights, resolve_weights

logger = logging.getLogger(__name__)

REPORT_KEYS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "auroc",
    "average_precision",
    "ece",
    "nll",
    "brier",
    "threshold",
    "confusion",
    "accuracy_per_category",
    "accuracy_dedup",
    "counts",
)


@dataclass
class EvalConfig:
    weights: str
    data: str
    split: str = "val"
    out: str = "runs/eval"
    robustness: bool = False
    threads: int = 2
    device: str = "auto"
    batch_size: int = 1024
    # For ``report`` on a model trained without a report split (v1-v3): the share of its validation split
    # to carve the report part from (its tune part then is what remains).
    report_fraction: float | None = None


SPLITS = ("val", "report", "test")


def load_eval_split(
    data: str, split: str, meta: ModelMeta, report_fraction: float | None = None
) -> CifakeSplit:
    """``test``; ``val``: the validation images the model was tuned on (early stopping, temperature,
    threshold); ``report``: the validation images held out of all of that (``retrainer.data.split_report``).
    A model trained without a report split has none unless ``report_fraction`` carves one from its
    validation split (which it never trained on, though it was tuned on all of it)."""
    if split == "test":
        return load_split(data, "test")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    ds = load_split(data, "train")
    if meta.data_fingerprint and ds.fingerprint != meta.data_fingerprint:
        logger.warning(
            "data fingerprint %s differs from the model's training data %s: this validation split may "
            "overlap the images the model was trained on",
            ds.fingerprint,
            meta.data_fingerprint,
        )
    seed = int(meta.split.get("seed", 0))
    _, val_idx = split_train_val(ds, float(meta.split.get("val_fraction", 0.1)), seed)
    fraction = float(meta.split.get("report_fraction", 0.0))
    if report_fraction is not None:
        if fraction and report_fraction != fraction:
            raise ValueError(f"the model's report split is {fraction} of validation, not {report_fraction}")
        fraction = report_fraction
    if split == "report" and not fraction:
        raise ValueError(
            f"{meta.version or 'this model'} was trained without a report split; "
            "give --report-fraction to carve one out of its validation split"
        )
    if fraction:
        tune_idx, report_idx = split_report(ds, val_idx, fraction, seed)
        val_idx = report_idx if split == "report" else tune_idx
    return ds.subset(val_idx)


def compute_report(
    labels: np.ndarray, p_fake: np.ndarray, categories: np.ndarray, hashes: np.ndarray, threshold: float
) -> dict[str, Any]:
    """All report metrics for one set of scores (used for the clean and every perturbed copy)."""
    rep = binary_metrics(labels, p_fake, threshold)
    pred = (p_fake >= threshold).astype(np.int64)
    correct = pred == labels
    rep["accuracy_per_category"] = {
        CATEGORIES[c]: float(correct[categories == c].mean())
        for c in range(len(CATEGORIES))
        if (categories == c).any()
    }
    rep["accuracy_per_category_class"] = {
        f"{cls}/{CATEGORIES[c]}": float(correct[(categories == c) & (labels == k)].mean())
        for k, cls in enumerate(("real", "fake"))
        for c in range(len(CATEGORIES))
        if ((categories == c) & (labels == k)).any()
    }
    first = dedup_index(hashes)
    rep["accuracy_dedup"] = float(correct[first].mean()) if len(first) else float("nan")
    rep["counts"] = {
        "n": len(labels),
        "real": int((labels == 0).sum()),
        "fake": int((labels == 1).sum()),
        "unique": len(first),
        "duplicates": len(labels) - len(first),
    }
    return rep


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Score the split, write report.json, figures and report.html into ``cfg.out``; return the report."""
    from retrainer.report import write_figures, write_html

    torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    wpath = resolve_weights(cfg.weights)
    model, meta = load_weights(wpath, device=device)
    ds = load_eval_split(cfg.data, cfg.split, meta, cfg.report_fraction)
    t0 = time.perf_counter()
    logits = predict_logits(model, ds.images, meta.mean, meta.std, cfg.batch_size, device)
    scoring_s = time.perf_counter() - t0
    p = p_fake_from_logits(logits)
    report = compute_report(ds.labels, p, ds.categories, ds.hashes, meta.threshold)
    report["accuracy_at_0.5"] = float(((p >= 0.5).astype(np.int64) == ds.labels).mean())
    report["reliability"] = reliability(ds.labels, p)
    report.update(
        split=cfg.split,
        data_fingerprint=ds.fingerprint,
        n_corrupt_skipped=ds.n_corrupt,
        scoring_images_per_s=round(len(ds) / max(scoring_s, 1e-9), 1),
        model={
            "weights": str(wpath),
            "sha256": _sha256(wpath),
            "arch": meta.arch,
            "arch_kwargs": meta.arch_kwargs,
            "params": count_params(model),
            "version": meta.version,
            "parent_version": meta.parent_version,
            "temperature": meta.temperature,
            "train_metrics": meta.metrics,
        },
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    if cfg.robustness:
        report["robustness"] = _robustness(model, meta, ds, report, cfg, device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    curves = {"roc": roc_curve(ds.labels, p), "pr": pr_curve(ds.labels, p)}
    figures = write_figures(out, report, curves, ds, p)
    _write_json(out / "report.json", report)
    write_html(out / "report.html", report, figures)
    logger.info(
        "report written to %s: accuracy %.4f auroc %.5f ece %.4f",
        out,
        report["accuracy"],
        report["auroc"],
        report["ece"],
    )
    return report


def _robustness(
    model: torch.nn.Module,
    meta: ModelMeta,
    ds: CifakeSplit,
    clean: dict[str, Any],
    cfg: EvalConfig,
    device: torch.device,
) -> dict[str, Any]:
    """The same metrics on perturbed copies; ``*_drop`` = clean minus perturbed, in points (0..1 scale)."""
    out: dict[str, Any] = {}
    for name, fn in PERTURBATIONS.items():
        t0 = time.perf_counter()
        images = fn(ds.images)
        p = p_fake_from_logits(predict_logits(model, images, meta.mean, meta.std, cfg.batch_size, device))
        rep = compute_report(ds.labels, p, ds.categories, ds.hashes, meta.threshold)
        out[name] = {
            k: rep[k] for k in ("accuracy", "precision", "recall", "f1", "auroc", "average_precision", "ece")
        } | {
            "accuracy_drop": clean["accuracy"] - rep["accuracy"],
            "auroc_drop": clean["auroc"] - rep["auroc"],
            "recall_real": rep["confusion"]["tn"] / max(1, rep["counts"]["real"]),
        }
        logger.info(
            "robustness %s: accuracy %.4f (drop %.4f) in %.1fs",
            name,
            rep["accuracy"],
            out[name]["accuracy_drop"],
            time.perf_counter() - t0,
        )
    return out


def _write_json(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=float)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
