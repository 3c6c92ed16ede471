"""Validation data for the offline studies (faithfulness, evidence): the retrainer's CIFAKE loader.

The studies must use exactly the validation split the model was selected on (same loader, cache,
de-duplication, fraction and seed), hence the retrainer's loader.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from scorer.weights import ModelMeta

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationSet:
    images: np.ndarray  # uint8 [N, 32, 32, 3]
    labels: np.ndarray  # int64 [N], 0 real, 1 fake
    categories: np.ndarray  # int64 [N], CIFAR-10 class index
    category_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> ValidationSet:
        return ValidationSet(self.images[idx], self.labels[idx], self.categories[idx], self.category_names)


def load_validation(data: str, meta: ModelMeta) -> ValidationSet:
    """The validation split of the CIFAKE folder/zip ``data`` that ``meta``'s model was selected on."""
    from retrainer.data import CATEGORIES
    from retrainer.evaluate import load_eval_split

    split = load_eval_split(data, "val", meta)
    logger.info("validation split: %d images (%d fake)", len(split), int(split.labels.sum()))
    return ValidationSet(split.images, split.labels, split.categories, tuple(CATEGORIES))


def sample(ds: ValidationSet, n: int | None, seed: int, label: int | None = None) -> ValidationSet:
    """Up to ``n`` images (all when None), optionally of one label, in a seeded random order."""
    idx = np.arange(len(ds)) if label is None else np.flatnonzero(ds.labels == label)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(idx)
    if n is not None:
        idx = idx[:n]
    return ds.take(np.sort(idx))
