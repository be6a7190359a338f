"""Benchmark specs we author; each built-in benchmark is ``<name>/benchmark.yaml``."""
