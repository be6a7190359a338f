"""Where benchmark files live, and how an image reference in a spec becomes pixels.

An image reference in a spec is one of:

* ``skimage:<name>``: a photo bundled with scikit-image (``skimage.data.<name>()``), so the
  ``demo`` benchmark runs anywhere with no download;
* ``./<path>`` or ``../<path>``: relative to the directory of the spec file (user specs);
* an absolute path;
* any other relative path: relative to the data root.

The data root is, in order: the ``--data-root`` option, the ``RELBENCH_DATA_ROOT`` environment
variable, ``$XDG_CACHE_HOME/relbench/data`` (``~/.cache/relbench/data``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from relbench.errors import RelbenchError

if TYPE_CHECKING:
    from PIL import Image

DATA_ROOT_ENV = "RELBENCH_DATA_ROOT"
SKIMAGE_SCHEME = "skimage:"

# Photos that ship inside scikit-image's wheel (no pooch download). Grey-scale ones are converted
# to RGB when loaded.
SKIMAGE_BUNDLED: dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "camera": "camera.png",
    "horse": "horse.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
}


def default_data_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "relbench" / "data"


def resolve_data_root(option: str | os.PathLike[str] | None = None) -> Path:
    """The data root from the CLI option, else the environment, else the per-user cache."""
    if option:
        return Path(option).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    return default_data_root()


def is_bundled(ref: str) -> bool:
    return ref.startswith(SKIMAGE_SCHEME)


def resolve_path(ref: str, data_root: Path, spec_dir: Path | None = None) -> Path:
    """The file a (non-bundled) reference points to."""
    if is_bundled(ref):
        return _skimage_file(ref)
    path = Path(ref)
    if path.is_absolute():
        return path
    if ref.startswith(("./", "../")) and spec_dir is not None:
        return spec_dir / path
    return data_root / path


def _skimage_file(ref: str) -> Path:
    name = ref[len(SKIMAGE_SCHEME):]
    if name not in SKIMAGE_BUNDLED:
        raise RelbenchError(
            f"{ref}: unknown bundled photo; expected one of {', '.join(sorted(SKIMAGE_BUNDLED))}"
        )
    import skimage.data  # lazy: scikit-image is only needed for bundled photos

    return Path(skimage.data.__file__).parent / SKIMAGE_BUNDLED[name]


def load_image(ref: str, data_root: Path, spec_dir: Path | None = None) -> "Image.Image":
    """Load a reference as an RGB PIL image, with a one-line error naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = resolve_path(ref, data_root, spec_dir)
    if not path.is_file():
        hint = "" if is_bundled(ref) else f" (data root: {data_root}; run `relbench data download` or pass --data-root)"
        raise RelbenchError(f"{path}: image not found{hint}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RelbenchError(f"{path}: cannot read image: {exc}") from exc
