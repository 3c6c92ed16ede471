"""Which model explains a verdict: the one named in it.

The explainer serves a current model (its configured weights, then whatever ``models.published``
announces, through the scorer's ``ModelWatcher``) and keeps a small LRU of other versions. A verdict
naming a version it does not hold is explained with that version, loaded from the ``models`` table and
bucket after checking its sha256; a version known nowhere is a permanent error
(``unknown_model_version``), a registry or store that is down a transient one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

from explainer.cam import CamExplainer, Method
from explainer.sink import ExplanationSink
from ingest.errors import PermanentError
from ingest.storage import ObjectStore
from scorer.engine import ServingModel
from scorer.hotswap import fetch_verified_model

logger = logging.getLogger(__name__)


class Explainers:
    """A loaded model and one ``CamExplainer`` per method. Owns the model (its parameters are frozen)."""

    def __init__(self, model: ServingModel, methods: Sequence[Method]) -> None:
        self.serving = model
        self.by_method = {m: CamExplainer(model.model, m, model.meta.mean, model.meta.std) for m in methods}

    @property
    def version(self) -> str:
        return self.serving.version

    @property
    def input_size(self) -> int:
        return self.serving.input_size


def load_registered(
    sink: ExplanationSink, store: ObjectStore, version: str, device: torch.device | str
) -> ServingModel:
    """Load ``version`` from the registry (``models`` row + object), verifying its sha256."""
    reg = sink.registered_model(version)
    if reg is None:
        raise PermanentError(
            f"model version {version!r} is neither served nor in the models registry", "unknown_model_version"
        )
    try:
        return fetch_verified_model(store, reg.object_key, reg.sha256, version, device, code_prefix="model_")
    except PermanentError as e:
        code = e.code if e.code in {"model_sha256_mismatch", "model_unloadable"} else "model_unavailable"
        raise PermanentError(f"model {version}: {e.reason}", code) from e


class ModelCache:
    """The current model plus an LRU of ``capacity`` other versions, by version string."""

    def __init__(
        self,
        current: ServingModel,
        methods: Sequence[Method],
        loader: Callable[[str], ServingModel],
        capacity: int = 3,
    ) -> None:
        self.methods = tuple(methods)
        self.loader = loader
        self.capacity = capacity
        self.current = Explainers(current, self.methods)
        self._others: OrderedDict[str, Explainers] = OrderedDict()
        self.loads = 0

    def swap(self, model: ServingModel) -> None:
        """Make ``model`` current; the old current model joins the LRU (old verdicts may still name it)."""
        if model.version == self.current.version:
            return
        logger.info("explaining with model %s (was %s)", model.version, self.current.version)
        self._remember(self.current)
        self._others.pop(model.version, None)
        self.current = Explainers(model, self.methods)

    def get(self, version: str) -> Explainers:
        """The explainers for ``version``, loading it when needed (may raise Permanent/transient errors)."""
        if version == self.current.version:
            return self.current
        if version in self._others:
            self._others.move_to_end(version)
            return self._others[version]
        model = self.loader(version)
        self.loads += 1
        ex = Explainers(model, self.methods)
        self._remember(ex)
        return ex

    def _remember(self, ex: Explainers) -> None:
        self._others[ex.version] = ex
        self._others.move_to_end(ex.version)
        while len(self._others) > self.capacity:
            old, _ = self._others.popitem(last=False)
            logger.info("model %s dropped from the explainer's cache", old)

    @property
    def cached_versions(self) -> list[str]:
        return [self.current.version, *self._others]
