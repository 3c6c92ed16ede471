"""Knowledge distillation from trained detectors (``retrainer train --teacher W [--teacher W2] --distill A``).

A student of the served size learns from labels and from the teachers' probabilities at once: its target
for each image is ``(1 - A) * one-hot(label) + A * (1 - p, p)``, where ``p`` is the teachers' mean p_fake.
Cross-entropy against that mixture is the usual distillation loss (labels plus the KL divergence to the
teacher) for two classes, and ``nn.CrossEntropyLoss`` takes such probability targets directly.

Why the teachers score each training image once, before training, rather than every augmented copy:
the training augmentations are a mirror (the served teachers are mirror-invariant by construction, flip
TTA), a shift of at most 2 pixels, and a JPEG re-encoded copy of the same image; a teacher's verdict on the
original is what the student should say about all of them, and one pass over the training set costs
about as much as one epoch's forward passes instead of one per step. The teachers' stored logits are
temperature-calibrated (``retrainer.train._finalize``), so their probabilities are used as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from scorer.infer import p_fake_from_logits, predict_logits
from scorer.weights import load_weights

logger = logging.getLogger(__name__)


def teacher_p_fake(weights: Sequence[str], images: np.ndarray, device: torch.device) -> np.ndarray:
    """The teachers' mean p_fake (float32 ``[N]``) for uint8 NHWC ``images``."""
    if not weights:
        raise ValueError("distillation needs at least one --teacher")
    total = np.zeros(len(images), np.float64)
    for w in weights:
        model, meta = load_weights(w, device=device)
        p = p_fake_from_logits(predict_logits(model, images, meta.mean, meta.std, device=device))
        logger.info("teacher %s (%s): mean p_fake %.4f on %d images", w, meta.version, p.mean(), len(p))
        total += p
    return (total / len(weights)).astype(np.float32)


def soft_targets(labels: torch.Tensor, p_teacher: torch.Tensor, alpha: float) -> torch.Tensor:
    """``[N, 2]`` class probabilities: ``(1 - alpha) * one-hot(labels) + alpha * (1 - p, p)``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the distillation weight must lie in [0, 1], not {alpha}")
    hard = torch.nn.functional.one_hot(labels.long(), 2).float()
    teacher = torch.stack([1.0 - p_teacher, p_teacher], dim=1).float()
    return (1.0 - alpha) * hard + alpha * teacher
