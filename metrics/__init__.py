"""Metrics, registered lazily so that listing them imports no torch."""

from relbench.registry import Registry

METRICS: Registry = Registry("metric")
