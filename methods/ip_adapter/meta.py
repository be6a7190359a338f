"""ip-adapter's metadata: what `relbench methods list` and the CLI read without importing torch;
``IPAdapter`` takes its name and profiles from it (``info = INFO``)."""

from relbench.plugins import MethodInfo

INFO = MethodInfo(
    name="ip-adapter",
    target="relbench.methods.ip_adapter.method:IPAdapter",
    summary="IP-Adapter Plus (SDXL, ViT-H): one reference per subject, each masked to its layout box.",
)
