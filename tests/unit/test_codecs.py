"""Platforms' producers compress as they like: every Kafka codec must reach the scorer, on the real broker."""

from __future__ import annotations

from ingest.kafka import missing_codecs, producer_kwargs
from ingest.settings import KafkaSettings

CODECS = (None, "gzip", "snappy", "lz4", "zstd")


def test_every_codec_can_be_decoded_here() -> None:
    assert missing_codecs() == []


def test_the_projects_producers_compress_with_the_configured_codec() -> None:
    assert producer_kwargs(KafkaSettings())["compression_type"] == "lz4"
    assert "compression_type" not in producer_kwargs(KafkaSettings(compression_type="none"))
    assert producer_kwargs(KafkaSettings(compression_type="zstd"))["compression_type"] == "zstd"
