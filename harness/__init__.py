"""Benchmarks, studies and demos that are not part of a running service."""
