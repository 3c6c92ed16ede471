"""Topic names shared by every service (see the README's architecture section)."""

from __future__ import annotations

IMAGES_SUBMITTED = "images.submitted"
IMAGES_VERDICTS = "images.verdicts"
IMAGES_EXPLANATIONS = "images.explanations"
MODERATION_FEEDBACK = "moderation.feedback"
MODELS_PUBLISHED = "models.published"
# Known-content list changes (``KnownContentUpdate``), read by every scorer without a consumer group.
KNOWN_CONTENT_UPDATES = "known_content.updates"

ALL_TOPICS = (
    IMAGES_SUBMITTED,
    IMAGES_VERDICTS,
    IMAGES_EXPLANATIONS,
    MODERATION_FEEDBACK,
    MODELS_PUBLISHED,
    KNOWN_CONTENT_UPDATES,
)


def dlq_topic(topic: str) -> str:
    """The dead-letter topic that receives records of ``topic`` that can never be processed."""
    return f"{topic}.dlq"
