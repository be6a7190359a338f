"""Generation methods, registered lazily so that listing them imports no torch.

One line per method names its torch-free ``MethodInfo`` (``methods/<name>/meta.py``: name, class,
summary, profiles, required settings, trainer, CLI shortcut options); the class takes its name and
profiles from the same object (``info = INFO``). To add a method: a folder ``methods/<name>/`` with
``meta.py`` and ``method.py`` (a ``relbench.method.Method`` subclass), and one line here. Methods
from outside the repository: ``$RELBENCH_METHODS`` (see ``relbench.plugins``).
"""

import logging

from relbench.registry import Registry


class _EmptyFloat32Notice(logging.Filter):
    """Drops diffusers' (0.42) "There are modules in X that should be kept in float32: []": it is
    said on every dtype cast of a model even when the list is empty (SDXL's, every run); a line that
    names modules still prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_EmptyFloat32Notice())

METHODS: Registry = Registry("method", env="RELBENCH_METHODS")

METHODS.add("relbench.methods.reference_collage.meta:INFO")
METHODS.add("relbench.methods.sdxl.meta:INFO")
METHODS.add("relbench.methods.ms_diffusion.meta:INFO")
METHODS.add("relbench.methods.dreamrelation.meta:INFO")
METHODS.add("relbench.methods.ip_adapter.meta:INFO")
METHODS.add("relbench.methods.omnigen.meta:INFO")
METHODS.add("relbench.methods.reversion.meta:INFO")
METHODS.add("relbench.methods.folder.meta:INFO")
METHODS.add("relbench.methods.dreambooth_lora.meta:INFO")
METHODS.add("relbench.methods.custom_diffusion.meta:INFO")
