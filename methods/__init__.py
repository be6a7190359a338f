"""Generation methods, registered lazily so that listing them imports no torch."""

from relbench.registry import Registry

METHODS: Registry = Registry("method")
