"""folder's metadata: what `relbench methods list` and the CLI read without importing torch;
``Folder`` takes its name and profiles from it (``info = INFO``)."""

from relbench.plugins import MethodInfo

INFO = MethodInfo(
    name="folder",
    target="relbench.methods.folder.method:Folder",
    summary="Images made elsewhere: --set folder.path=DIR (<case_id>/<seed>.png) or FILE.csv, folder.name=NAME.",
    requires=("path",),
)
