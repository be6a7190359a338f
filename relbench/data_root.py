"""Where benchmark files live, and how an image reference in a spec becomes pixels.

An image reference in a spec is one of:

* ``skimage:<name>``: a photo bundled with scikit-image (``skimage.data.<name>()``), so the
  ``demo`` benchmark runs anywhere with no download;
* ``./<path>`` or ``../<path>``: relative to the directory of the spec file (user specs);
* an absolute path;
* any other relative path: relative to the data root.

The data root is, in order: the ``--data-root`` option, the ``RELBENCH_DATA_ROOT`` environment
variable, ``$XDG_CACHE_HOME/relbench/data`` (``~/.cache/relbench/data``).

Every image a spec names is opened by ``open_image``: ``relbench data validate`` and evaluation read
it the same way (fully decoded, at most ``MAX_IMAGE_PIXELS``), so what validates also evaluates and
a bad file gives the same one-line error in both.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from relbench.errors import RelbenchError

if TYPE_CHECKING:
    from PIL import Image

DATA_ROOT_ENV = "RELBENCH_DATA_ROOT"
# The largest image a spec may name: 64 megapixels (8192 x 8192 = 67,108,864 pixels), far above any
# benchmark photo and any resolution the methods use. It is checked on the header, before a pixel
# is decoded, so a small file that claims to be huge (a decompression bomb) costs neither time nor
# memory. PIL's own guard (Image.MAX_IMAGE_PIXELS, about 89 megapixels) only warns there and
# raises at twice that; this one is a clean error at exactly this size.
MAX_IMAGE_PIXELS = 8192 * 8192
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
    path = resolve_path(ref, data_root, spec_dir)
    if not path.is_file():
        hint = "" if is_bundled(ref) else f" (data root: {data_root}; run `relbench data download` or pass --data-root)"
        raise RelbenchError(f"{path}: image not found{hint}")
    return open_image(path).convert("RGB")


def open_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> "Image.Image":
    """Open and fully decode an existing image file (mode as stored); any failure is one line.

    A file over ``max_pixels``, truncated, corrupt or not an image raises ``RelbenchError`` naming
    the file: ``<path>: cannot read image: <why>``.
    """
    from PIL import Image, UnidentifiedImageError

    limit = f"the limit is {max_pixels:,} pixels; resize it"
    try:
        with warnings.catch_warnings():
            # PIL warns from ~89 megapixels; the size is refused just below, with one clean line.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise RelbenchError(f"{path}: cannot read image: {width} x {height} pixels is too large; {limit}")
            image.load()  # decodes every pixel: a truncated or corrupt file fails here, not later
            return image
    except Image.DecompressionBombError as exc:  # over twice PIL's limit: refused inside Image.open
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "its size"
        raise RelbenchError(f"{path}: cannot read image: {size} is too large; {limit}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RelbenchError(f"{path}: cannot read image: {exc}") from exc
