"""``CIFAKE_RETRAINER_*`` settings for the feedback consumer, the retrain worker and the registry CLI."""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from ingest.decode import DecodeLimits
from ingest.fetch import FetchSettings
from ingest.settings import ServiceSettings
from ingest.topics import KNOWN_CONTENT_UPDATES, MODELS_PUBLISHED, MODERATION_FEEDBACK

# No built-in dataset location: users point the retrainer at their own copy of the public CIFAKE archive
# (a zip or a folder with train/ and test/) with CIFAKE_RETRAINER_BASE_DATA or --data.
DEFAULT_BASE_DATA = ""


class GateSettings(BaseModel):
    """Candidate becomes champion only if hold-out accuracy gains >= ``delta`` and base validation
    accuracy drops <= ``epsilon`` (both absolute, in [0, 1] accuracy units)."""

    delta: float = 0.01
    epsilon: float = 0.005
    min_holdout: int = Field(default=20, ge=0)  # fewer hold-out images than this: no evidence, reject


class TrainBudget(BaseModel):
    """Fine-tuning budget: small on purpose (minutes on 2 CPU cores), seeded."""

    steps: int = Field(default=300, ge=1)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=0.01, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    feedback_share: float = Field(default=0.5, gt=0, le=1)  # share of each batch drawn from feedback images
    replay: int = Field(default=4000, ge=0)  # base training images replayed against forgetting
    base_val_max: int = Field(default=4000, ge=10)  # base validation subsample (seeded, stratified by label)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    shift: int = Field(default=2, ge=0)
    # Weight of the fine-tuned weights in the candidate; below 1 the candidate is the weight-space average
    # with the champion (WiSE-FT, Wortsman et al. 2022), which keeps more of the base task.
    interpolate: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    threads: int = Field(default=0, ge=0)  # 0: torch's choice


class RetrainerSettings(ServiceSettings):
    """``CIFAKE_RETRAINER_*``; nested groups use ``__`` (``CIFAKE_RETRAINER_GATE__DELTA=0.02``)."""

    model_config = SettingsConfigDict(
        env_prefix="CIFAKE_RETRAINER_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    group_id: str = "retrainer"
    feedback_topic: str = MODERATION_FEEDBACK
    models_topic: str = MODELS_PUBLISHED
    # Moderators' majority labels put image hashes on the known-content lists, announced here ("" turns the
    # lists off); hashes of PDQ quality below the minimum (featureless images) stay off them.
    known_topic: str = KNOWN_CONTENT_UPDATES
    known_min_quality: int = Field(default=50, ge=0, le=100)
    # Tests put their versions under their own prefix in bucket `models`.
    model_key_prefix: str = ""
    metrics_port: int | None = 9103
    worker_metrics_port: int | None = 9104
    max_batch: int = Field(default=256, ge=1)
    max_wait_ms: int = Field(default=200, ge=0)
    # Triggers: this many new labelled images since the last retrain, or this many seconds since it (with at
    # least one new label); 0 disables a trigger. `retrain-now` is the manual one.
    trigger_labels: int = Field(default=200, ge=0)
    trigger_interval_s: float = Field(default=3600.0, ge=0)
    worker_poll_s: float = Field(default=5.0, gt=0)
    base_data: str = DEFAULT_BASE_DATA
    # CIFAR-10 categories of the base data the champion was trained on (None: all). Replay and base validation
    # use only these, so a retrain never sees ground truth the moderators did not give it.
    base_categories: list[int] | None = None
    # Score the base validation set under each perturbation of retrainer.perturb (reported, not gated).
    robustness: bool = True
    device: str = "cpu"
    gate: GateSettings = GateSettings()
    budget: TrainBudget = TrainBudget()
    fetch: FetchSettings = FetchSettings()
    limits: DecodeLimits = DecodeLimits()
