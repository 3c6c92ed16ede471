"""Ingest: message contracts, settings, the shared Kafka consumer loop, and safe image fetching.

Everything else in the service depends on this package; it depends on nothing above it.
"""
