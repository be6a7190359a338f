"""relbench: benchmark and evaluation toolkit for relation-aware customized image generation."""

__version__ = "0.1.0"
