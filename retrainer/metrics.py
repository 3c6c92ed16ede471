"""Binary classification metrics in plain numpy ("fake" = positive class = 1).

Scores are ``p_fake`` in [0, 1]. Ties in AUROC are handled by average ranks (Mann-Whitney U), so the value
matches the trapezoidal ROC area.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} differ in length")
    return y, p


def _rankdata(a: np.ndarray) -> np.ndarray:
    """Average ranks, 1-based (scipy.stats.rankdata(method='average'))."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    boundaries = np.flatnonzero(np.diff(sorted_a)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(a)]])
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(a), np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    y, p = _check(y, p)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _rankdata(p)
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, highest threshold first."""
    y, p = _check(y, p)
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    distinct = np.flatnonzero(np.diff(ps)) if len(ps) else np.array([], np.int64)
    idx = np.concatenate([distinct, [len(ps) - 1]]) if len(ps) else distinct
    tps = np.cumsum(ys)[idx]
    fps = (idx + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(len(y) - int(y.sum()), 1)
    tpr = np.concatenate([[0.0], tps / n_pos])
    fpr = np.concatenate([[0.0], fps / n_neg])
    thr = np.concatenate([[np.inf], ps[idx]])
    return fpr, tpr, thr


def pr_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at every distinct score, recall increasing."""
    y, p = _check(y, p)
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    idx = np.concatenate([np.flatnonzero(np.diff(ps)), [len(ps) - 1]])
    tps = np.cumsum(ys)[idx]
    precision = tps / (idx + 1)
    recall = tps / max(int(y.sum()), 1)
    return precision, recall


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Step-wise AP, sum over thresholds of (R_k - R_{k-1}) * P_k (as sklearn computes it)."""
    y, p = _check(y, p)
    if y.sum() == 0:
        return float("nan")
    precision, recall = pr_curve(y, p)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the predicted class's confidence, equal-width bins over [0.5, 1]."""
    y, p = _check(y, p)
    if len(y) == 0:
        return float("nan")
    pred = (p >= 0.5).astype(np.int64)
    conf = np.where(pred == 1, p, 1.0 - p)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.sum() / len(y) * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """Per-bin confidence, accuracy and count for the reliability diagram (same bins as :func:`ece`)."""
    y, p = _check(y, p)
    pred = (p >= 0.5).astype(np.int64)
    conf = np.where(pred == 1, p, 1.0 - p)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out: dict[str, list[float]] = {"lower": [], "upper": [], "confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = bins == b
        out["lower"].append(float(edges[b]))
        out["upper"].append(float(edges[b + 1]))
        out["count"].append(float(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else float("nan"))
        out["accuracy"].append(float(correct[m].mean()) if m.any() else float("nan"))
    return out


def nll(y: np.ndarray, p: np.ndarray) -> float:
    y, p = _check(y, p)
    q = np.clip(np.where(y == 1, p, 1.0 - p), 1e-12, 1.0)
    return float(-np.log(q).mean())


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """The headline numbers at ``threshold`` (p_fake >= threshold -> fake)."""
    y, p = _check(y, p)
    pred = (p >= threshold).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(y) if len(y) else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": auroc(y, p),
        "average_precision": average_precision(y, p),
        "ece": ece(y, p),
        "nll": nll(y, p),
        "brier": float(np.mean((p - y) ** 2)) if len(y) else float("nan"),
        "threshold": float(threshold),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold in [0.05, 0.95] with the highest accuracy; ties go to the one nearest 0.5."""
    y, p = _check(y, p)
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    accs = np.array([((p >= t).astype(np.int64) == y).mean() for t in grid])
    best = np.flatnonzero(accs >= accs.max() - 1e-12)
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the NLL of ``softmax(logits / T)`` (golden-section search on log T)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(y, np.int64)
    margin = z[:, 1] - z[:, 0]  # binary softmax depends on the logit difference only
    sign = np.where(y == 1, 1.0, -1.0)

    def loss(log_t: float) -> float:
        return float(np.logaddexp(0.0, -sign * margin / np.exp(log_t)).mean())

    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if loss(a) < loss(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))
